"""Fashion-MNIST from its real IDX files (Xiao et al. 2017): 60k train / 10k test, 28x28 grey.

Looked for, in order: the ``data_dir`` argument (``--data-dir``), ``$SPIKEFORMERS_DATA`` (the folder
itself or its ``fashion-mnist/`` subfolder), ``/usr/share/datasets/fashion-mnist`` (Debian's
``dataset-fashion-mnist`` package) and the download cache ``~/.cache/spikeformers/fashion-mnist``.
Each file may be gzip-compressed (``.gz``) or raw. Magic numbers, shapes and counts are checked.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DatasetError

__all__ = ["load_fashion_mnist", "find_fashion_mnist", "download_fashion_mnist", "DatasetError",
           "CLASSES", "MEAN", "STD"]

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
MEAN, STD = 0.2860, 0.3530  # training-set pixel statistics (of x / 255)
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
COUNTS = {"train": 60000, "test": 10000}
# MD5 sums of the .gz files as published by the dataset's authors (zalandoresearch/fashion-mnist).
PUBLISHED_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
DEFAULT_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spikeformers" / "fashion-mnist"

HOW_TO_GET = (
    "Get Fashion-MNIST with `apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu, puts it in "
    f"{SYSTEM_DIR}) or `spikeformers download fashion-mnist` (verified download into {CACHE_DIR}), "
    "or pass --data-dir / set $SPIKEFORMERS_DATA to a folder holding the four IDX files "
    "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
    "t10k-labels-idx1-ubyte[.gz])."
)


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _candidates(data_dir) -> list[Path]:
    out = []
    if data_dir is not None:
        out += [Path(data_dir), Path(data_dir) / "fashion-mnist"]
        return out  # an explicit folder is authoritative
    env = os.environ.get("SPIKEFORMERS_DATA")
    if env:
        out += [Path(env), Path(env) / "fashion-mnist"]
    return out + [SYSTEM_DIR, CACHE_DIR]


def find_fashion_mnist(data_dir=None) -> Path:
    """The first folder that holds all four IDX files, else a :class:`DatasetError`."""
    tried = _candidates(data_dir)
    for folder in tried:
        if all(_file_in(folder, stem) for stem in FILES.values()):
            return folder
    raise DatasetError("Fashion-MNIST not found (looked in: " + ", ".join(map(str, tried)) + "). " + HOW_TO_GET)


def _read_idx(path: Path, magic: int, shape_tail: tuple[int, ...], count: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path} is corrupt or truncated ({e}). {HOW_TO_GET}") from None
    ndim = len(shape_tail) + 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated: {len(raw)} bytes, expected an IDX header of {header}. {HOW_TO_GET}")
    got_magic = struct.unpack(">i", raw[:4])[0]
    if got_magic != magic:
        raise DatasetError(f"{path} has IDX magic number {got_magic}, expected {magic} "
                           f"(unsigned bytes, {ndim} dimensions). {HOW_TO_GET}")
    dims = struct.unpack(">" + "i" * ndim, raw[4:header])
    if dims != (count, *shape_tail):
        raise DatasetError(f"{path} holds shape {dims}, expected {(count, *shape_tail)}. {HOW_TO_GET}")
    n = int(np.prod(dims))
    if len(raw) != header + n:
        raise DatasetError(f"{path} has {len(raw) - header} data bytes, expected {n} (truncated?). {HOW_TO_GET}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(split: str = "train", data_dir=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``uint8 [N, 28, 28]`` and labels ``int64 [N]`` of ``split`` ("train" or "test")."""
    if split not in COUNTS:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    folder = find_fashion_mnist(data_dir)
    images = _read_idx(_file_in(folder, FILES[(split, "images")]), 2051, (28, 28), COUNTS[split])
    labels = _read_idx(_file_in(folder, FILES[(split, "labels")]), 2049, (), COUNTS[split])
    if labels.max() > 9:
        raise DatasetError(f"labels of {split} go up to {labels.max()}, expected classes 0..9. {HOW_TO_GET}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_fashion_mnist(dest: Path | str = CACHE_DIR, base_url: str = DEFAULT_URL) -> Path:
    """Download the four .gz files into ``dest``, verifying each against its published MD5 sum.
    Files already present with the right sum are kept; each file is written atomically."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, md5 in PUBLISHED_MD5.items():
        target = dest / name
        if target.is_file() and _md5(target) == md5:
            continue
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=name + ".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(base_url + name, timeout=60) as resp:
                shutil.copyfileobj(resp, out)
            got = _md5(Path(tmp))
            if got != md5:
                raise DatasetError(f"downloaded {name} has MD5 {got}, expected the published {md5}")
            os.replace(tmp, target)
        except OSError as e:
            raise DatasetError(f"could not download {base_url + name}: {e}. {HOW_TO_GET}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return dest
