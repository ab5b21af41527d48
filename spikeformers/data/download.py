"""Verified downloads of the archives the dataset readers expect (``spikeformers download NAME``).

Each archive is fetched into ``DEST/<archive>.part`` (an interrupted download is *resumed* with an
HTTP ``Range`` request when the server allows it, else restarted), checked against its published
MD5 sum, and only then renamed to its final name; a wrong sum deletes the partial file. Extraction
is safe and atomic: every member is checked before anything is written (regular files and folders
only, no absolute paths, no ``..``, no links or devices, everything under the archive's one
top-level folder), the files are written into a temporary folder beside the target and that
folder is renamed into place, so ``DEST/cifar-10-batches-py`` either is complete or is not there.

Published sums: the CIFAR page (Krizhevsky, https://www.cs.toronto.edu/~kriz/cifar.html) lists the
MD5 of each "python version" archive; torchvision's ``torchvision/datasets/cifar.py``
(pytorch/vision) checks the same values (``tgz_md5``).

The default destination is the cache ``~/.cache/spikeformers`` (``$XDG_CACHE_HOME/spikeformers``),
where the CIFAR reader looks when no ``--data-dir`` is given.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from ..errors import ConfigError, DatasetError

__all__ = ["Archive", "ARCHIVES", "CACHE_ROOT", "download", "fetch", "safe_extract", "md5sum"]

CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spikeformers"


@dataclass(frozen=True)
class Archive:
    """One published dataset archive: where it is, its MD5 sum, and what it extracts to."""

    name: str                 # dataset name (``spikeformers download NAME``)
    url: str
    md5: str                  # published MD5 of the archive
    folder: str               # the one top-level folder the archive holds
    files: tuple[str, ...]    # files that must be in ``folder`` once extracted

    @property
    def filename(self) -> str:
        return PurePosixPath(self.url.split("?", 1)[0]).name


ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive("cifar10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
                       ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                        "test_batch", "batches.meta")),
    "cifar100": Archive("cifar100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python", ("train", "test", "meta")),
}

_CHUNK = 1 << 20


def md5sum(path: str | os.PathLike) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _progress(total: int | None, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                leave=True)


def fetch(url: str, target: str | os.PathLike, md5: str, progress: bool = True, timeout: float = 60) -> Path:
    """Download ``url`` to ``target``, verified against ``md5``; returns ``target``.

    A ``target`` already there with the right sum is kept. The bytes go to ``target.part`` first;
    a ``.part`` left by an interrupted run is resumed (``Range: bytes=N-``; a server that answers
    with the whole file restarts it). A sum that does not match deletes the ``.part`` and raises a
    :class:`~spikeformers.errors.DatasetError`; a network error keeps it for the next run."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file():
        if md5sum(target) == md5:
            return target
        target.unlink()      # a stale or corrupt copy: fetch it again
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    bar = None
    try:
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:   # the .part already holds every byte: verify it below
                resp = None
            else:
                raise
        if resp is not None:
            with resp:
                resumed = have > 0 and resp.status == 206
                if not resumed:
                    have = 0
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length is not None and length.isdigit() else None
                bar = _progress(total, have, target.name, progress)
                with open(part, "ab" if resumed else "wb") as out:
                    for chunk in iter(lambda: resp.read(_CHUNK), b""):
                        out.write(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                if total is not None and part.stat().st_size < total:
                    raise DatasetError(f"the download of {url} stopped at {part.stat().st_size:,} of {total:,} "
                                       f"bytes; run the command again to resume it from {part}")
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        got = part.stat().st_size if part.is_file() else 0
        raise DatasetError(f"could not download {url}: {getattr(e, 'reason', None) or e}"
                           + (f" ({got:,} bytes kept in {part}; run the command again to resume)" if got else "")
                           ) from None
    finally:
        if bar is not None:
            bar.close()
    got = md5sum(part)
    if got != md5:
        part.unlink()
        raise DatasetError(f"{url}: the downloaded file has MD5 {got}, expected the published {md5} "
                           "(deleted; run the command again, or check the URL)")
    os.replace(part, target)
    return target


def _check_member(m: tarfile.TarInfo, folder: str) -> PurePosixPath:
    """The member's relative path, or a DatasetError if extracting it could write anything but a
    plain file or folder under ``folder``."""
    p = PurePosixPath(m.name)
    if p.is_absolute() or m.name.startswith(("/", "\\")) or ".." in p.parts or "\\" in m.name or ":" in m.name:
        raise DatasetError(f"unsafe path {m.name!r} in the archive (absolute, or leaving its folder); nothing extracted")
    if not (m.isfile() or m.isdir()):
        kind = "link" if (m.issym() or m.islnk()) else "special file"
        raise DatasetError(f"the archive holds a {kind} {m.name!r}; only plain files and folders are extracted "
                           "(nothing extracted)")
    parts = [x for x in p.parts if x != "."]
    if not parts or parts[0] != folder:
        raise DatasetError(f"archive member {m.name!r} is outside the expected folder {folder!r}; nothing extracted")
    return PurePosixPath(*parts)


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, folder: str,
                 files: tuple[str, ...] = ()) -> Path:
    """Extract the tar archive ``archive`` (whose members all live under ``folder``) into
    ``dest/folder``, atomically, after checking every member (module docstring); ``files`` must be
    in it. Returns ``dest/folder``."""
    dest = Path(dest)
    final = dest / folder
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise DatasetError(f"{archive} is not a readable tar archive ({e})") from None
    with tar:
        members = tar.getmembers()
        rel = [_check_member(m, folder) for m in members]
        names = {str(r.relative_to(folder)) for r, m in zip(rel, members) if m.isfile()}
        missing = [f for f in files if f not in names]
        if missing:
            raise DatasetError(f"{archive} lacks {missing} in {folder}/; expected {list(files)}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".tmp", dir=dest))
        try:
            for r, m in zip(rel, members):
                out = tmp.joinpath(*r.parts[1:]) if len(r.parts) > 1 else tmp
                if m.isdir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                with src, open(out, "wb") as f:
                    shutil.copyfileobj(src, f, _CHUNK)
            if final.exists():
                raise DatasetError(f"{final} appeared while extracting; remove it and run the command again")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)     # mkdtemp's 0700 -> the usual permissions of a new folder
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def download(name: str, dest: str | os.PathLike | None = None, url: str | None = None,
             keep_archive: bool = False, progress: bool = True, archive: Archive | None = None) -> Path:
    """Download dataset ``name`` (see :data:`ARCHIVES`) into ``dest`` (default :data:`CACHE_ROOT`)
    and extract it; returns the extracted folder. ``url`` fetches the same archive from a mirror
    (its MD5 must still be the published one). A folder already complete is kept as it is."""
    if archive is None:
        if name not in ARCHIVES:
            raise ConfigError(f"unknown download {name!r}; expected one of {sorted(ARCHIVES)}")
        archive = ARCHIVES[name]
    if url:
        archive = replace(archive, url=url)
    dest = Path(dest) if dest is not None else CACHE_ROOT
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / archive.folder
    if final.is_dir():
        missing = [f for f in archive.files if not (final / f).is_file()]
        if not missing:
            return final
        raise DatasetError(f"{final} exists but lacks {missing}; remove it and run the command again")
    path = fetch(archive.url, dest / archive.filename, archive.md5, progress=progress)
    out = safe_extract(path, dest, archive.folder, archive.files)
    if not keep_archive:
        path.unlink()
    return out
