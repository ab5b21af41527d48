"""Frames of event recordings, integrated once and cached on disk as ``.npz``.

Cache layout: ``CACHE_ROOT/<dataset>_T<T>_<split_by>/<split>/<sample key>.npz`` with arrays
``frames`` (``[T, 2, H, W]`` counts, uint16 when they fit, else float32) and ``label``. The key
names the source recording (file stem plus the sample's index inside it), so changing T, the
split mode or the source gives a different file; files are written atomically (temporary file
then ``os.replace``) so an interrupted run or a concurrent worker never leaves a broken cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError
from .common import DatasetInfo, atomic_savez

__all__ = ["CachedEventFrames", "cache_dir_for", "write_frames"]


def cache_dir_for(cache_root: str | os.PathLike, dataset: str, T: int, split_by: str, split: str) -> Path:
    return Path(cache_root) / f"{dataset}_T{T}_{split_by}" / split


def write_frames(path: Path, frames: np.ndarray, label: int) -> None:
    store = frames.astype(np.uint16) if frames.size == 0 or frames.max() < 65536 else frames
    atomic_savez(path, frames=store, label=np.int64(label))


class CachedEventFrames(Dataset):
    """A list of cached ``.npz`` frame files with labels.

    Samples are ``(float32 [T, C, H, W], label)``. ``img_size`` resizes every frame (bilinear,
    anti-aliased, like torchvision's ``Resize`` on a tensor); ``in_chans=3`` appends the sum of
    the two polarity channels (SpikingResformer's DVS input); ``transform`` acts on the final
    ``[T, C, H, W]`` tensor (see :mod:`spikeformers.data.event_augment`).
    """

    def __init__(self, files: Sequence[Path], labels: Sequence[int], info: DatasetInfo,
                 img_size: int | None = None, in_chans: int = 2, transform: Callable | None = None):
        if in_chans not in (2, 3):
            raise ConfigError(f"in_chans for event frames must be 2 (ON/OFF) or 3 (ON/OFF/sum), got {in_chans}")
        self.files, self.labels = list(files), [int(v) for v in labels]
        self.img_size, self.in_chans, self.transform = img_size, in_chans, transform
        self.info = info
        self.info.in_chans = in_chans
        if img_size is not None:
            self.info.img_size = img_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with np.load(self.files[i]) as z:
            x = torch.from_numpy(z["frames"].astype(np.float32))
        if self.img_size is not None and x.shape[-1] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear",
                              align_corners=False, antialias=self.img_size < x.shape[-1])
        if self.in_chans == 3:
            x = torch.cat([x, x.sum(1, keepdim=True)], 1)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[i]

