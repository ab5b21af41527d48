"""CIFAR-10 and CIFAR-100, "python version" pickle batches (the files from cs.toronto.edu).

On disk::

    DATA_DIR/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    DATA_DIR/cifar-100-python/{train, test, meta}

Without a ``data_dir`` (``--data-dir``) the reader looks in ``$SPIKEFORMERS_DATA``, then in the cache
``~/.cache/spikeformers`` where ``spikeformers download cifar10`` / ``cifar100`` extracts the archives.

Each batch is a pickled dict with bytes keys: ``b'data'`` is uint8 ``[N, 3072]``, each row the
1024 red, then 1024 green, then 1024 blue values of a 32x32 image in row-major order;
``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100; ``b'coarse_labels'`` is ignored).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DatasetError
from .common import DatasetInfo, DatasetNotFoundError

__all__ = ["CIFAR", "load_cifar_arrays", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

_LAYOUT = {
    10: """  DATA_DIR/cifar-10-batches-py/
      data_batch_1 ... data_batch_5   (training, 10000 images each)
      test_batch                      (10000 images)
      batches.meta                    (label_names)
    (the 'CIFAR-10 python version' archive cifar-10-python.tar.gz, extracted into DATA_DIR)""",
    100: """  DATA_DIR/cifar-100-python/
      train   (50000 images, fine_labels)
      test    (10000 images)
      meta    (fine_label_names)
    (the 'CIFAR-100 python version' archive cifar-100-python.tar.gz, extracted into DATA_DIR)""",
}


def _find_root(data_dir: Path, folder: str) -> Path | None:
    for cand in (data_dir / folder, data_dir):
        if (cand / ("batches.meta" if folder.startswith("cifar-10-") else "meta")).is_file():
            return cand
    return None


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _candidates(data_dir) -> list[Path]:
    """``data_dir`` when given (authoritative), else ``$SPIKEFORMERS_DATA`` and the download cache."""
    if data_dir is not None:
        return [Path(data_dir)]
    from .download import CACHE_ROOT
    env = os.environ.get("SPIKEFORMERS_DATA")
    return ([Path(env)] if env else []) + [CACHE_ROOT]


def load_cifar_arrays(data_dir: str | Path | None, num_classes: int, train: bool):
    """Return ``(images uint8 [N,3,32,32], labels int64 [N], class_names)``; ``data_dir`` None
    looks in ``$SPIKEFORMERS_DATA`` and the download cache (module docstring)."""
    if num_classes not in (10, 100):
        raise ConfigError(f"num_classes must be 10 or 100, got {num_classes}")
    folder = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    name = f"CIFAR-{num_classes}"
    tried = _candidates(data_dir)
    root = next((r for r in (_find_root(d, folder) for d in tried) if r is not None), None)
    data_dir = tried[0]
    if root is None:
        where = " or ".join(repr(str(d)) for d in tried[1:])
        raise DatasetNotFoundError(name, data_dir, _LAYOUT[num_classes],
                                   (f"also looked in {where}; " if where else "")
                                   + f"`spikeformers download cifar{num_classes}` fetches and verifies it")
    if num_classes == 10:
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        label_key, meta_file, names_key = b"labels", "batches.meta", b"label_names"
    else:
        files = ["train"] if train else ["test"]
        label_key, meta_file, names_key = b"fine_labels", "meta", b"fine_label_names"
    datas, labels = [], []
    for fn in files:
        p = root / fn
        if not p.is_file():
            raise DatasetNotFoundError(name, data_dir, _LAYOUT[num_classes], f"missing file {p}")
        d = _unpickle(p)
        if b"data" not in d or label_key not in d:
            raise DatasetError(f"{p}: expected a pickled dict with keys b'data' and {label_key!r}, "
                             f"got keys {sorted(d.keys())}")
        data = np.asarray(d[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DatasetError(f"{p}: expected b'data' of shape [N, 3072], got {list(data.shape)}")
        datas.append(data)
        labels.append(np.asarray(d[label_key], dtype=np.int64))
    data = np.concatenate(datas).reshape(-1, 3, 32, 32)
    lab = np.concatenate(labels)
    if len(lab) != len(data):
        raise DatasetError(f"{name}: {len(data)} images but {len(lab)} labels")
    meta = _unpickle(root / meta_file)
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(names_key, [])]
    if len(class_names) != num_classes:
        class_names = [str(i) for i in range(num_classes)]
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise DatasetError(f"{name}: labels outside [0, {num_classes}): min {lab.min()}, max {lab.max()}")
    return torch.from_numpy(data.copy()), torch.from_numpy(lab), class_names


class CIFAR(Dataset):
    """CIFAR-10/100 in memory. ``transform`` maps a float ``[3,32,32]`` image in [0, 1] to the
    model input; without one, samples are the [0, 1] images."""

    def __init__(self, data_dir, num_classes: int = 10, train: bool = True,
                 transform: Callable | None = None):
        self.images, self.labels, self.classes = load_cifar_arrays(data_dir, num_classes, train)
        self.transform = transform
        self.info = DatasetInfo(
            name=f"cifar{num_classes}", num_classes=num_classes, in_chans=3, img_size=32,
            classes=self.classes,
            mean=CIFAR10_MEAN if num_classes == 10 else CIFAR100_MEAN,
            std=CIFAR10_STD if num_classes == 10 else CIFAR100_STD)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i].float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])
