"""ImageNet-style class folders of JPEG / PNG images, decoded with Pillow into uint8 tensors.

On disk::

    DATA_DIR/train/<class name>/*.JPEG|*.jpg|*.png ...
    DATA_DIR/val/<class name>/...

Classes are the sorted folder names of ``train/`` (so class i is the same in both splits; a
``val/`` class missing from ``train/`` is an error). The official ImageNet val set must already
be sorted into class folders (the usual ``valprep.sh`` step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DatasetError
from .common import DatasetInfo, DatasetNotFoundError

__all__ = ["ImageFolder", "decode_image", "IMAGENET_MEAN", "IMAGENET_STD", "IMG_EXTENSIONS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")

LAYOUT = """  DATA_DIR/train/<class>/<image>.JPEG   (one folder per class; classes = sorted folder names)
  DATA_DIR/val/<class>/<image>.JPEG     (same class folder names)"""


def decode_image(path: str | Path, draft_size: int | None = None) -> torch.Tensor:
    """Decode to RGB uint8 ``[3, H, W]``. ``draft_size`` lets JPEG decode at a reduced scale
    (a power of 2) whose shorter side stays >= draft_size - much faster for large photos."""
    from PIL import Image

    with Image.open(path) as im:
        if draft_size is not None and im.format == "JPEG":
            im.draft("RGB", (draft_size, draft_size))
        im = im.convert("RGB")
        arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _classes(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


class ImageFolder(Dataset):
    """Samples are ``(transform(float [3,H,W] in [0,1]), label)``. Without a transform images
    keep their own size (use :func:`~spikeformers.data.transforms.build_image_transform`)."""

    def __init__(self, data_dir, train: bool = True, transform: Callable | None = None,
                 img_size: int = 224, draft_size: int | None = None, split: str | None = None):
        data_dir = Path(data_dir)
        split = split or ("train" if train else "val")
        split_dir = data_dir / split
        train_dir = data_dir / "train"
        if not split_dir.is_dir():
            raise DatasetNotFoundError("image folder dataset", data_dir, LAYOUT, f"no {split}/ folder")
        classes = _classes(train_dir if train_dir.is_dir() else split_dir)
        if not classes:
            raise DatasetNotFoundError("image folder dataset", data_dir, LAYOUT, f"no class folders in {split_dir}")
        extra = sorted(set(_classes(split_dir)) - set(classes))
        if extra:
            raise DatasetError(f"{split_dir} has class folders not in train/: {extra[:5]}")
        index = {c: i for i, c in enumerate(classes)}
        self.samples: list[tuple[str, int]] = []
        for c in _classes(split_dir):
            for f in sorted((split_dir / c).rglob("*")):
                if f.suffix.lower() in IMG_EXTENSIONS and f.is_file():
                    self.samples.append((str(f), index[c]))
        if not self.samples:
            raise DatasetNotFoundError("image folder dataset", data_dir, LAYOUT,
                                       f"no images with extensions {IMG_EXTENSIONS} under {split_dir}")
        self.classes, self.transform, self.draft_size = classes, transform, draft_size
        self.info = DatasetInfo("imagefolder", num_classes=len(classes), in_chans=3, img_size=img_size,
                                classes=classes, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        x = decode_image(path, self.draft_size).float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, label
