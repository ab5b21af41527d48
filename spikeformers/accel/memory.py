"""Process-wide memory setting for long CPU runs (Linux / glibc)."""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory"]


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4   # glibc malloc.h


def keep_freed_memory() -> bool:
    """Ask glibc's malloc never to serve allocations by ``mmap`` and to keep up to 2 GiB of freed
    heap (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)``): the big, short-lived
    tensors of a train step then reuse memory already mapped instead of faulting in fresh pages
    each time. Returns whether it took effect (False off Linux, without glibc, or with
    ``SPIKEFORMERS_MALLOC=0``). The process's resident memory stays near its peak afterwards."""
    if os.environ.get("SPIKEFORMERS_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
