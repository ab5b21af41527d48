"""CIFAR10-DVS (Li et al. 2017), from its original per-class AEDAT 2.0 recordings.

On disk::

    DATA_DIR/CIFAR10-DVS/           (or DATA_DIR itself)
        airplane/cifar10_airplane_0.aedat ... cifar10_airplane_999.aedat
        automobile/ ... truck/             (10 class folders, 1000 recordings each)

Split: the standard 9:1 per class - within each class the files in sorted order (plain string
order, as the DatasetFolder-based pipelines list them), the first ceil(0.9 n) for training and the
rest for test. Frames are 128x128 (DVS128 sensor), cached once per T and split mode.
"""

from __future__ import annotations

import math
from pathlib import Path

from .aedat import read_cifar10dvs_aedat
from .common import DatasetInfo, DatasetNotFoundError
from .event_cache import CachedEventFrames, cache_dir_for, write_frames
from .frames import events_to_frames

__all__ = ["CIFAR10DVS", "CIFAR10DVS_CLASSES", "split_files"]

CIFAR10DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

LAYOUT = """  DATA_DIR/CIFAR10-DVS/                  (or DATA_DIR itself)
      airplane/cifar10_airplane_0.aedat ...   AEDAT 2.0 recordings, one folder per class:
      automobile/ bird/ cat/ deer/ dog/ frog/ horse/ ship/ truck/"""


def _root(data_dir: Path) -> Path | None:
    for cand in (data_dir / "CIFAR10-DVS", data_dir / "CIFAR10DVS", data_dir):
        if all((cand / c).is_dir() for c in CIFAR10DVS_CLASSES):
            return cand
    return None


def split_files(files: list, train: bool, train_ratio: float = 0.9) -> list:
    files = sorted(files, key=lambda p: Path(p).name)
    k = math.ceil(len(files) * train_ratio)
    return files[:k] if train else files[k:]


class CIFAR10DVS(CachedEventFrames):
    def __init__(self, data_dir, train: bool = True, T: int = 16, split_by: str = "number",
                 cache_dir=None, img_size: int | None = None, in_chans: int = 2, transform=None,
                 train_ratio: float = 0.9, orientation: str = "spikingjelly", progress: bool = False):
        data_dir = Path(data_dir)
        root = _root(data_dir)
        if root is None:
            missing = [c for c in CIFAR10DVS_CLASSES if not (data_dir / c).is_dir()]
            raise DatasetNotFoundError("CIFAR10-DVS", data_dir, LAYOUT, f"missing class folders {missing}")
        split = "train" if train else "test"
        tag = "cifar10-dvs" + ("" if orientation == "spikingjelly" else f"-{orientation}")
        out_dir = cache_dir_for(cache_dir or root / "frames_cache", tag, T, split_by, split)
        files, labels = [], []
        work = []
        for label, cls in enumerate(CIFAR10DVS_CLASSES):
            recs = split_files([p for p in (root / cls).iterdir() if p.suffix == ".aedat"], train, train_ratio)
            if not recs and train:
                raise DatasetNotFoundError("CIFAR10-DVS", data_dir, LAYOUT, f"no .aedat files in {root / cls}")
            for rec in recs:
                path = out_dir / cls / (rec.stem + ".npz")
                files.append(path)
                labels.append(label)
                if not path.is_file():
                    work.append((rec, path, label))
        if progress and work:
            from tqdm import tqdm
            work = tqdm(work, desc=f"CIFAR10-DVS {split}: integrating T={T} frames")
        for rec, path, label in work:
            frames = events_to_frames(read_cifar10dvs_aedat(rec, orientation), T, 128, 128, split_by)
            write_frames(path, frames, label)
        info = DatasetInfo("cifar10-dvs", num_classes=10, in_chans=2, img_size=128, T=T,
                           classes=CIFAR10DVS_CLASSES)
        super().__init__(files, labels, info, img_size=img_size, in_chans=in_chans, transform=transform)
