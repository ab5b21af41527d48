"""Augmentations for event frames ``[T, C, H, W]``: one random draw per sample, applied to every
time step alike (the motion in the recording is preserved).

* :class:`EventHorizontalFlip` - mirror left-right.
* :class:`EventRoll` - cyclic shift by up to ``max_shift`` pixels in x and y (torch.roll).
* :class:`EventShear`, :func:`event_rotate`, :func:`event_translate` - affine warps, zero fill.
* :class:`SNNAugmentWide` - the TrivialAugment-style policy of the Spikformer / QKFormer DVS
  recipes: one op drawn uniformly from {Identity, ShearX +-0.3, TranslateX +-5 px,
  TranslateY +-5 px, Rotate +-30 deg}, magnitude one of 31 evenly spaced bins, random sign.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .randaugment import affine, rotate_matrix

__all__ = ["EventHorizontalFlip", "EventRoll", "EventShear", "SNNAugmentWide", "DVSAugment",
           "event_shear_x", "event_rotate", "event_translate"]


def _check(x):
    if x.ndim != 4:
        raise ConfigError(f"event augmentations expect frames [T, C, H, W], got shape {list(x.shape)}")


def event_shear_x(x: torch.Tensor, s: float) -> torch.Tensor:
    return affine(x, (1, s, 0, 0, 1, 0), 0.0, mode="nearest")


def event_rotate(x: torch.Tensor, deg: float) -> torch.Tensor:
    return affine(x, rotate_matrix(deg, *x.shape[-2:]), 0.0, mode="nearest")


def event_translate(x: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """Shift content by (dx, dy) pixels (positive = right / down), zero fill."""
    return affine(x, (1, 0, -dx, 0, 1, -dy), 0.0, mode="nearest")


class EventHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x):
        _check(x)
        return x.flip(-1) if float(torch.rand(())) < self.p else x


class EventRoll:
    def __init__(self, max_shift: int = 5):
        self.max_shift = max_shift

    def __call__(self, x):
        _check(x)
        dx, dy = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
        return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


class EventShear:
    def __init__(self, max_shear: float = 0.3):
        self.max_shear = max_shear

    def __call__(self, x):
        _check(x)
        return event_shear_x(x, (2 * float(torch.rand(())) - 1) * self.max_shear)


class SNNAugmentWide:
    OPS = ("Identity", "ShearX", "TranslateX", "TranslateY", "Rotate")
    MAX = {"ShearX": 0.3, "TranslateX": 5.0, "TranslateY": 5.0, "Rotate": 30.0}

    def __init__(self, num_bins: int = 31):
        self.num_bins = num_bins

    def __call__(self, x):
        _check(x)
        op = self.OPS[int(torch.randint(len(self.OPS), ()))]
        if op == "Identity":
            return x
        mag = float(torch.linspace(-self.MAX[op], self.MAX[op], self.num_bins)[int(torch.randint(self.num_bins, ()))])
        if float(torch.rand(())) < 0.5:
            mag = -mag
        if op == "ShearX":
            return event_shear_x(x, mag)
        if op == "TranslateX":
            return event_translate(x, round(mag), 0)
        if op == "TranslateY":
            return event_translate(x, 0, round(mag))
        return event_rotate(x, mag)


class DVSAugment:
    """flip (p) -> roll (max_shift, 0 = off) -> SNNAugmentWide (if ``wide``)."""

    def __init__(self, flip: float = 0.5, roll: int = 0, wide: bool = True):
        self.ops = [EventHorizontalFlip(flip) if flip > 0 else None, EventRoll(roll) if roll > 0 else None,
                    SNNAugmentWide() if wide else None]
        self.ops = [o for o in self.ops if o is not None]

    def __call__(self, x):
        for o in self.ops:
            x = o(x)
        return x
