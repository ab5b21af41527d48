"""Pieces shared by every dataset reader: the info record, the missing-data error, atomic writes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import DatasetNotFoundError
from ..serialization import atomic_write

__all__ = ["DatasetInfo", "DatasetNotFoundError", "atomic_savez", "natural_key"]


@dataclass
class DatasetInfo:
    """What a model needs to know about a dataset.

    ``T`` is set for event datasets (samples are ``[T, C, H, W]``) and is ``None`` for images
    (samples are ``[C, H, W]``). ``img_size`` is the spatial size of one sample (``H == W``).
    """

    name: str
    num_classes: int
    in_chans: int
    img_size: int
    T: int | None = None
    classes: Sequence[str] = field(default_factory=tuple)
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def as_dict(self) -> dict:
        return {
            "name": self.name, "num_classes": self.num_classes, "in_chans": self.in_chans,
            "img_size": self.img_size, "T": self.T, "classes": list(self.classes),
        }


def atomic_savez(path: str | os.PathLike, compressed: bool = True, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` (.npz) so that a reader never sees a half-written file
    (:func:`~spikeformers.serialization.atomic_write`)."""
    def write(tmp):
        with open(tmp, "wb") as f:       # a file object: np.savez would append ".npz" to a name
            (np.savez_compressed if compressed else np.savez)(f, **arrays)

    atomic_write(path, write)


def natural_key(s: str):
    """Sort key that orders ``file_2`` before ``file_10``."""
    import re
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]
