"""Image transforms on tensors (no torchvision).

Every transform takes and returns a float image ``[C, H, W]`` (values in [0, 1] before
:class:`Normalize`, standardised after it) and draws its randomness from torch's global generator,
which DataLoader seeds differently in every worker.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = [
    "Compose", "Resize", "CenterCrop", "RandomCrop", "RandomResizedCrop", "RandomHorizontalFlip",
    "Normalize", "RandomErasing", "resize", "hflip", "build_image_transform",
]

_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}


def _rand() -> float:
    return float(torch.rand(()))


def _uniform(a: float, b: float) -> float:
    return a + (b - a) * _rand()


def _randint(lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, ()))


def _check(img: torch.Tensor) -> None:
    if img.ndim != 3:
        raise ConfigError(f"expected an image [C,H,W], got shape {list(img.shape)}")


def resize(img: torch.Tensor, size: int | tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """Resize ``[C,H,W]`` (or ``[B,C,H,W]``) to ``size`` = (h, w), or make the shorter side ``size``
    when an int is given (aspect ratio kept). Anti-aliased when shrinking, clamped to the input
    range for bicubic overshoot."""
    h, w = img.shape[-2:]
    if isinstance(size, int):
        if h <= w:
            oh, ow = size, max(1, int(round(size * w / h)))
        else:
            oh, ow = max(1, int(round(size * h / w))), size
    else:
        oh, ow = size
    if (oh, ow) == (h, w):
        return img
    mode = _MODES[interpolation]
    x = img.unsqueeze(0) if img.ndim == 3 else img
    kw = {} if mode == "nearest" else {"align_corners": False, "antialias": oh < h or ow < w}
    out = F.interpolate(x, size=(oh, ow), mode=mode, **kw)
    if mode == "bicubic":
        out = out.clamp_(float(img.min()), float(img.max()))
    return out[0] if img.ndim == 3 else out


def hflip(img: torch.Tensor) -> torch.Tensor:
    """Mirror left-right: column j becomes column W-1-j."""
    return img.flip(-1)


class Compose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = [t for t in transforms if t is not None]

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class Resize:
    def __init__(self, size, interpolation: str = "bicubic"):
        self.size, self.interpolation = size, interpolation

    def __call__(self, img):
        return resize(img, self.size, self.interpolation)

    def __repr__(self):
        return f"Resize({self.size}, {self.interpolation})"


class CenterCrop:
    def __init__(self, size: int | tuple[int, int]):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, img):
        _check(img)
        h, w = img.shape[-2:]
        th, tw = self.size
        if th > h or tw > w:  # pad symmetrically with zeros, as torchvision does
            pt, pl = max(0, (th - h) // 2), max(0, (tw - w) // 2)
            img = F.pad(img, (pl, max(0, tw - w - pl), pt, max(0, th - h - pt)))
            h, w = img.shape[-2:]
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
        return img[..., top:top + th, left:left + tw]

    def __repr__(self):
        return f"CenterCrop({self.size})"


class RandomCrop:
    """Pad by ``padding`` pixels on every side (zeros, or ``padding_mode`` of F.pad), then crop
    ``size`` at a uniformly random position: the CIFAR "crop 32 with padding 4"."""

    def __init__(self, size: int, padding: int = 0, padding_mode: str = "constant"):
        self.size, self.padding, self.padding_mode = size, padding, padding_mode

    def __call__(self, img):
        _check(img)
        if self.padding:
            p = self.padding
            img = F.pad(img.unsqueeze(0), (p, p, p, p), mode=self.padding_mode).squeeze(0) \
                if self.padding_mode != "constant" else F.pad(img, (p, p, p, p))
        h, w = img.shape[-2:]
        if h < self.size or w < self.size:
            raise ConfigError(f"RandomCrop: padded image {h}x{w} is smaller than crop {self.size}")
        top, left = _randint(0, h - self.size), _randint(0, w - self.size)
        return img[..., top:top + self.size, left:left + self.size]

    def __repr__(self):
        return f"RandomCrop({self.size}, padding={self.padding})"


class RandomResizedCrop:
    """Crop a random area fraction in ``scale`` with aspect ratio (log-uniform) in ``ratio``,
    resized to ``size``; after 10 failed tries fall back to a center crop, as torchvision does."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation: str = "bicubic"):
        self.size, self.scale, self.ratio, self.interpolation = size, tuple(scale), tuple(ratio), interpolation

    def get_params(self, h: int, w: int) -> tuple[int, int, int, int]:
        area = h * w
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(*self.scale)
            ar = math.exp(_uniform(*log_r))
            cw = int(round(math.sqrt(target * ar)))
            ch = int(round(math.sqrt(target / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                return _randint(0, h - ch), _randint(0, w - cw), ch, cw
        in_ratio = w / h
        if in_ratio < min(self.ratio):
            cw, ch = w, int(round(w / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            ch, cw = h, int(round(h * max(self.ratio)))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, img):
        _check(img)
        top, left, ch, cw = self.get_params(*img.shape[-2:])
        return resize(img[..., top:top + ch, left:left + cw], (self.size, self.size), self.interpolation)

    def __repr__(self):
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img):
        return hflip(img) if self.p > 0 and _rand() < self.p else img

    def __repr__(self):
        return f"RandomHorizontalFlip({self.p})"


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img):
        if img.shape[-3] != self.mean.shape[0]:
            raise ConfigError(f"Normalize: image has {img.shape[-3]} channels, mean/std have {self.mean.shape[0]}")
        return (img - self.mean) / self.std

    def __repr__(self):
        return f"Normalize({self.mean.flatten().tolist()}, {self.std.flatten().tolist()})"


class RandomErasing:
    """timm's RandomErasing (Zhong et al. 2017) on one normalised image: with probability ``p``
    erase a rectangle of area fraction in [min_area, max_area] and log-uniform aspect ratio in
    [min_aspect, 1/min_aspect]. ``mode`` 'const' fills zeros (the dataset mean after Normalize),
    'rand' one normal value per channel, 'pixel' a normal value per pixel."""

    def __init__(self, p: float = 0.25, mode: str = "const", min_area: float = 0.02,
                 max_area: float = 1 / 3, min_aspect: float = 0.3, max_count: int = 1):
        if mode not in ("const", "rand", "pixel"):
            raise ConfigError(f"RandomErasing mode must be const, rand or pixel, got {mode!r}")
        self.p, self.mode, self.min_area, self.max_area = p, mode, min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
        self.max_count = max_count

    def __call__(self, img):
        if self.p <= 0 or _rand() >= self.p:
            return img
        img = img.clone()
        c, h, w = img.shape[-3:]
        count = 1 if self.max_count == 1 else _randint(1, self.max_count)
        for _ in range(count):
            for _attempt in range(10):
                target = h * w * _uniform(self.min_area, self.max_area) / count
                ar = math.exp(_uniform(*self.log_aspect))
                eh, ew = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
                if 0 < eh < h and 0 < ew < w:
                    top, left = _randint(0, h - eh), _randint(0, w - ew)
                    if self.mode == "const":
                        fill = torch.zeros(c, 1, 1)
                    elif self.mode == "rand":
                        fill = torch.randn(c, 1, 1)
                    else:
                        fill = torch.randn(c, eh, ew)
                    img[..., top:top + eh, left:left + ew] = fill.to(img.dtype)
                    break
        return img

    def __repr__(self):
        return f"RandomErasing(p={self.p}, mode={self.mode})"


def build_image_transform(train: bool, img_size: int, mean=None, std=None, *, crop: str = "rrc",
                          scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), padding: int = 4, hflip: float = 0.5,
                          randaugment: str | None = None, random_erasing: float = 0.0,
                          random_erasing_mode: str = "const", crop_pct: float = 0.875,
                          interpolation: str = "bicubic") -> Compose:
    """The usual timm-style pipeline on a [0, 1] float image.

    train: ``crop`` ('rrc' = RandomResizedCrop(scale, ratio), 'pad' = RandomCrop with ``padding``,
    'none' = resize only) -> horizontal flip -> RandAugment -> Normalize -> RandomErasing.
    eval: resize the shorter side to ``img_size / crop_pct`` -> center crop ``img_size`` -> Normalize.
    """
    from .randaugment import RandAugment

    norm = Normalize(mean, std) if mean is not None and std is not None else None
    if not train:
        if crop_pct >= 1.0:
            return Compose([Resize((img_size, img_size), interpolation), norm])
        return Compose([Resize(int(math.floor(img_size / crop_pct)), interpolation), CenterCrop(img_size), norm])
    if crop == "rrc":
        first = RandomResizedCrop(img_size, scale, ratio, interpolation)
    elif crop == "pad":
        first = Compose([Resize((img_size, img_size), interpolation), RandomCrop(img_size, padding)])
    elif crop == "none":
        first = Resize((img_size, img_size), interpolation)
    else:
        raise ConfigError(f"crop must be 'rrc', 'pad' or 'none', got {crop!r}")
    ra = RandAugment.from_config(randaugment, mean=mean) if randaugment else None
    erase = RandomErasing(random_erasing, random_erasing_mode) if random_erasing > 0 else None
    return Compose([first, RandomHorizontalFlip(hflip) if hflip > 0 else None, ra, norm, erase])
