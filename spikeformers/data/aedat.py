"""Readers for the two AEDAT versions the DVS datasets ship in. Both return a dict of numpy
arrays ``t`` (int64, microseconds), ``x``, ``y`` (int32), ``p`` (int8, 1 = ON, 0 = OFF).

AEDAT 3.1 (DVS128 Gesture, https://docs.inivation.com/.../aedat-3.1.html): ASCII header lines that
start with ``#`` and end with CRLF, the last one ``#!END-HEADER\\r\\n``; then event packets, each a
28-byte little-endian header::

    int16 eventType, int16 eventSource, int32 eventSize, int32 eventTSOffset,
    int32 eventTSOverflow, int32 eventCapacity, int32 eventNumber, int32 eventValid

followed by ``eventCapacity * eventSize`` bytes of events (capacity equals number in files
written by cAER; we read ``eventNumber`` events and skip the rest). Polarity events (type 1) are
8 bytes: ``uint32 data`` with valid mark in bit 0, polarity in bit 1, y in bits 2-16 and x in
bits 17-31 (libcaer ``polarity.h``); ``int32 timestamp`` at ``eventTSOffset``, extended to 64 bits
with ``eventTSOverflow << 31``. Invalid events (valid bit 0) are dropped.

AEDAT 2.0 (CIFAR10-DVS, jAER): ``#`` header lines, then big-endian 8-byte events
``uint32 address, uint32 timestamp``. For the DVS128 address: raw x = (addr >> 1) & 0x7F,
raw y = (addr >> 8) & 0x7F, polarity bit = addr & 1 (1 = OFF).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DatasetError

__all__ = ["read_aedat31", "read_aedat2_raw", "read_cifar10dvs_aedat", "skip_aedat_header",
           "write_aedat31", "write_aedat2"]

POLARITY_EVENT = 1
_HEADER = struct.Struct("<hhiiiiii")


def skip_aedat_header(buf: bytes) -> int:
    """Offset of the first byte after the ASCII header (lines starting with '#')."""
    pos = 0
    n = len(buf)
    while pos < n and buf[pos:pos + 1] == b"#":
        end = buf.find(b"\n", pos)
        if end < 0:
            return n
        line = buf[pos:end + 1]
        pos = end + 1
        if line.startswith(b"#!END-HEADER"):
            break
    return pos


def _empty():
    return {"t": np.zeros(0, np.int64), "x": np.zeros(0, np.int32),
            "y": np.zeros(0, np.int32), "p": np.zeros(0, np.int8)}


def read_aedat31(path: str | Path) -> dict:
    """Polarity events of an AEDAT 3.1 file (other packet types are skipped)."""
    buf = Path(path).read_bytes()
    pos = skip_aedat_header(buf)
    if not buf.startswith(b"#!AER-DAT3"):
        raise DatasetError(f"{path}: not an AEDAT 3.x file (first line {buf[:16]!r}, expected '#!AER-DAT3.1')")
    datas, stamps = [], []
    n = len(buf)
    while pos + _HEADER.size <= n:
        etype, _src, esize, tsoff, tsovf, cap, num, _valid = _HEADER.unpack_from(buf, pos)
        pos += _HEADER.size
        if esize <= 0 or num < 0:
            raise DatasetError(f"{path}: corrupt packet header at byte {pos - _HEADER.size} "
                             f"(eventSize {esize}, eventNumber {num})")
        length = max(cap, num) * esize
        if etype == POLARITY_EVENT and num > 0:
            if pos + num * esize > n:
                raise DatasetError(f"{path}: truncated polarity packet at byte {pos}")
            raw = np.frombuffer(buf, dtype=np.uint8, count=num * esize, offset=pos).reshape(num, esize)
            data = raw[:, 0:4].copy().view("<u4").ravel()
            ts = raw[:, tsoff:tsoff + 4].copy().view("<i4").ravel().astype(np.int64)
            ts |= np.int64(tsovf) << 31
            keep = (data & 1).astype(bool)
            datas.append(data[keep])
            stamps.append(ts[keep])
        pos += length
    if not datas:
        return _empty()
    data = np.concatenate(datas)
    return {"t": np.concatenate(stamps),
            "x": ((data >> 17) & 0x7FFF).astype(np.int32),
            "y": ((data >> 2) & 0x7FFF).astype(np.int32),
            "p": ((data >> 1) & 1).astype(np.int8)}


def read_aedat2_raw(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(address uint32, timestamp int64)`` of an AEDAT 2.0 file (big-endian pairs)."""
    buf = Path(path).read_bytes()
    pos = skip_aedat_header(buf)
    nev = (len(buf) - pos) // 8
    arr = np.frombuffer(buf, dtype=">u4", count=2 * nev, offset=pos)
    return arr[0::2].astype(np.uint32), arr[1::2].astype(np.int64)


def read_cifar10dvs_aedat(path: str | Path, orientation: str = "spikingjelly") -> dict:
    """Events of one CIFAR10-DVS recording (DVS128, 128x128).

    ``orientation='spikingjelly'`` (default; what the Spikformer/SDT/QKFormer/SpikingResformer
    numbers were trained on): x = 127 - raw_y, y = 127 - raw_x.
    ``orientation='dat2mat'`` (the dataset authors' MATLAB reader): x = 127 - raw_x, y = raw_y.
    Polarity is 1 - (addr & 1) in both."""
    addr, t = read_aedat2_raw(path)
    rx = ((addr >> 1) & 0x7F).astype(np.int32)
    ry = ((addr >> 8) & 0x7F).astype(np.int32)
    p = (1 - (addr & 1)).astype(np.int8)
    if orientation == "spikingjelly":
        x, y = 127 - ry, 127 - rx
    elif orientation == "dat2mat":
        x, y = 127 - rx, ry
    else:
        raise ConfigError(f"orientation must be 'spikingjelly' or 'dat2mat', got {orientation!r}")
    return {"t": t, "x": x, "y": y, "p": p}


# ---- writers (used by the tests and by anyone making fixtures) ---------------------------------
def write_aedat31(path: str | Path, t, x, y, p, packet_size: int = 4096, valid=None,
                  extra_packet: bool = True) -> None:
    """Write polarity events as an AEDAT 3.1 file (timestamps may exceed 2**31: the overflow
    goes into eventTSOverflow). ``extra_packet`` inserts a non-polarity (special) packet first."""
    t = np.asarray(t, np.int64)
    data = ((np.asarray(x, np.uint32) << 17) | (np.asarray(y, np.uint32) << 2)
            | (np.asarray(p, np.uint32) << 1))
    vmask = np.ones(len(t), bool) if valid is None else np.asarray(valid, bool)
    data = data | vmask.astype(np.uint32)
    out = [b"#!AER-DAT3.1\r\n", b"#Format: RAW\r\n", b"#Source 1: DVS128\r\n",
           b"#Start-Time: 2017-01-01 00:00:00 (TZ+0000)\r\n", b"#!END-HEADER\r\n"]
    if extra_packet:  # a special-event packet of 2 events (8 bytes each)
        out.append(_HEADER.pack(0, 1, 8, 4, 0, 2, 2, 2) + b"\x01\x00\x00\x00" * 4)
    i = 0
    while i < len(t):
        ovf = int(t[i] >> 31)
        j = i
        while j < len(t) and j - i < packet_size and int(t[j] >> 31) == ovf:
            j += 1
        n = j - i
        ev = np.empty((n, 2), "<u4")
        ev[:, 0] = data[i:j]
        ev[:, 1] = (t[i:j] & 0x7FFFFFFF).astype(np.uint32)
        out.append(_HEADER.pack(POLARITY_EVENT, 1, 8, 4, ovf, n, n, int(vmask[i:j].sum())))
        out.append(ev.tobytes())
        i = j
    Path(path).write_bytes(b"".join(out))


def write_aedat2(path: str | Path, addr, t) -> None:
    ev = np.empty((len(t), 2), ">u4")
    ev[:, 0] = np.asarray(addr, np.uint32)
    ev[:, 1] = np.asarray(t, np.uint32)
    Path(path).write_bytes(b"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n" + ev.tobytes())
