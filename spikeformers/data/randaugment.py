"""RandAugment (Cubuk et al. 2019) on float tensors, configured like timm's ``rand_augment_transform``.

Config string: ``rand-m{M}-n{N}-mstd{S}-mmax{X}-inc{0|1}-p{P}``, e.g. ``rand-m9-n1-mstd0.4-inc1``.
Defaults follow timm: M = 10, N = 2 ops per image (drawn with replacement), each applied with
probability P = 0.5, magnitude noise std S = 0 (S > 100 means uniform in [0, M]), magnitude
clipped to [0, X = 10]; ``inc1`` selects the "increasing" op set, where a larger magnitude always
means a stronger change. Level -> argument mappings follow timm's ``auto_augment.py``:

==================  ==========================================================
Rotate              +-30 deg * M/10
ShearX / ShearY     +-0.3 * M/10
TranslateX/YRel     +-0.45 * M/10 of the image size
Color/Contrast/...  factor 0.1 + 1.8 * M/10           (increasing: 1 +- 0.9 * M/10)
Posterize           keep int(4 * M/10) bits           (increasing: 4 - int(4 * M/10))
Solarize            threshold int(256 * M/10)         (increasing: 256 - int(256 * M/10))
SolarizeAdd         add int(110 * M/10) below 128
==================  ==========================================================

Images are ``[C, H, W]`` floats in [0, 1]; point ops quantise to 256 levels like PIL does.
Geometric ops fill uncovered pixels with the dataset mean (timm's ``img_mean``).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["RandAugment", "OPS", "parse_randaugment"]

_LEVEL_DENOM = 10.0
_GRAY = torch.tensor([0.299, 0.587, 0.114])


def _rand() -> float:
    return float(torch.rand(()))


def _negate(v: float) -> float:
    return -v if _rand() < 0.5 else v


def _to_u8(img: torch.Tensor) -> torch.Tensor:
    return (img.clamp(0, 1) * 255.0).round_()


def _gray(img: torch.Tensor) -> torch.Tensor:
    if img.shape[0] == 1:
        return img
    return (img * _GRAY.to(img).view(3, 1, 1)).sum(0, keepdim=True)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL ImageEnhance: ``b + factor * (a - b)`` (factor 0 gives b, 1 gives a), clipped."""
    return (b + factor * (a - b)).clamp_(0, 1)


def affine(img: torch.Tensor, matrix, fill=0.0, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``img`` ([..., C, H, W]) at input = M @ [x, y, 1] for every output pixel centre
    (x, y) in pixel units (PIL's ``Image.transform(AFFINE)`` convention). Outside is ``fill``."""
    h, w = img.shape[-2:]
    a, b, c, d, e, f = [float(v) for v in matrix]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5,
                            torch.arange(w, dtype=torch.float32) + 0.5, indexing="ij")
    xin = a * xs + b * ys + c
    yin = d * xs + e * ys + f
    grid = torch.stack([2 * xin / w - 1, 2 * yin / h - 1], -1).to(img.dtype)
    x = img.reshape(-1, *img.shape[-3:])
    fill_t = torch.as_tensor(fill, dtype=img.dtype).reshape(-1, 1, 1)
    if fill_t.numel() not in (1, x.shape[1]):
        fill_t = fill_t.mean().reshape(1, 1, 1)
    out = F.grid_sample(x - fill_t, grid.expand(x.shape[0], h, w, 2), mode=mode,
                        padding_mode="zeros", align_corners=False) + fill_t
    return out.reshape(img.shape)


def rotate_matrix(deg: float, h: int, w: int):
    """Inverse map for a counter-clockwise rotation by ``deg`` about the image centre."""
    t = math.radians(deg)
    cx, cy = w / 2.0, h / 2.0
    ca, sa = math.cos(t), math.sin(t)
    # input - c = [[cos, -sin], [sin, cos]] (output - c)   (y axis points down)
    return (ca, -sa, cx - ca * cx + sa * cy, sa, ca, cy - sa * cx - ca * cy)


# ---- the ops: (img, arg, fill) -> img ----------------------------------------------------------
def auto_contrast(img, _=None, fill=None):
    lo = img.amin(dim=(-2, -1), keepdim=True)
    hi = img.amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(hi > lo, 1.0 / (hi - lo).clamp_min(1e-12), torch.ones_like(hi))
    lo = torch.where(hi > lo, lo, torch.zeros_like(lo))
    return ((img - lo) * scale).clamp_(0, 1)


def equalize(img, _=None, fill=None):
    """PIL ImageOps.equalize, channel by channel on 256 levels."""
    u8 = _to_u8(img).long()
    out = torch.empty_like(img)
    for ch in range(img.shape[0]):
        v = u8[ch].flatten()
        hist = torch.bincount(v, minlength=256)
        nz = hist[hist > 0]
        step = int((int(hist.sum()) - int(nz[-1])) // 255) if nz.numel() else 0
        if step == 0:
            out[ch] = img[ch]
            continue
        cum = torch.cumsum(hist, 0) - hist  # count strictly below each level
        lut = ((cum + step // 2) // step).clamp_(0, 255)
        out[ch] = lut[u8[ch]].to(img.dtype) / 255.0
    return out


def invert(img, _=None, fill=None):
    return 1.0 - img


def posterize(img, bits: int, fill=None):
    bits = int(bits)
    if bits >= 8:
        return img
    mask = (~(2 ** (8 - bits) - 1)) & 0xFF
    return (_to_u8(img).to(torch.uint8) & mask).to(img.dtype) / 255.0


def solarize(img, thresh: int, fill=None):
    u = _to_u8(img)
    return torch.where(u >= thresh, 255.0 - u, u) / 255.0


def solarize_add(img, add: int, fill=None, thresh: int = 128):
    u = _to_u8(img)
    return torch.where(u < thresh, (u + add).clamp(max=255.0), u) / 255.0


def color(img, factor: float, fill=None):
    return _blend(img, _gray(img).expand_as(img), factor)


def contrast(img, factor: float, fill=None):
    m = (_to_u8(_gray(img)).mean() / 255.0)
    return _blend(img, torch.full_like(img, float(m)), factor)


def brightness(img, factor: float, fill=None):
    return _blend(img, torch.zeros_like(img), factor)


def sharpness(img, factor: float, fill=None):
    """PIL's SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]]/13 on the interior; borders unchanged."""
    k = torch.ones(3, 3, dtype=img.dtype)
    k[1, 1] = 5.0
    k = (k / 13.0).expand(img.shape[0], 1, 3, 3)
    blurred = img.clone()
    blurred[:, 1:-1, 1:-1] = F.conv2d(img.unsqueeze(0), k, groups=img.shape[0])[0]
    return _blend(img, blurred, factor)


def rotate(img, deg: float, fill=0.0):
    return affine(img, rotate_matrix(deg, *img.shape[-2:]), fill)


def shear_x(img, s: float, fill=0.0):
    return affine(img, (1, s, 0, 0, 1, 0), fill)


def shear_y(img, s: float, fill=0.0):
    return affine(img, (1, 0, 0, s, 1, 0), fill)


def translate_x_rel(img, pct: float, fill=0.0):
    return affine(img, (1, 0, pct * img.shape[-1], 0, 1, 0), fill)


def translate_y_rel(img, pct: float, fill=0.0):
    return affine(img, (1, 0, 0, 0, 1, pct * img.shape[-2]), fill)


# level (0..10) -> argument
def _enhance(level):
    return (level / _LEVEL_DENOM) * 1.8 + 0.1


def _enhance_inc(level):
    return 1.0 + _negate((level / _LEVEL_DENOM) * 0.9)


OPS = {  # name: (fn, level_to_arg)
    "AutoContrast": (auto_contrast, None),
    "Equalize": (equalize, None),
    "Invert": (invert, None),
    "Rotate": (rotate, lambda l: _negate(l / _LEVEL_DENOM * 30.0)),
    "Posterize": (posterize, lambda l: int(l / _LEVEL_DENOM * 4)),
    "PosterizeIncreasing": (posterize, lambda l: 4 - int(l / _LEVEL_DENOM * 4)),
    "Solarize": (solarize, lambda l: int(l / _LEVEL_DENOM * 256)),
    "SolarizeIncreasing": (solarize, lambda l: 256 - int(l / _LEVEL_DENOM * 256)),
    "SolarizeAdd": (solarize_add, lambda l: int(l / _LEVEL_DENOM * 110)),
    "Color": (color, _enhance),
    "ColorIncreasing": (color, _enhance_inc),
    "Contrast": (contrast, _enhance),
    "ContrastIncreasing": (contrast, _enhance_inc),
    "Brightness": (brightness, _enhance),
    "BrightnessIncreasing": (brightness, _enhance_inc),
    "Sharpness": (sharpness, _enhance),
    "SharpnessIncreasing": (sharpness, _enhance_inc),
    "ShearX": (shear_x, lambda l: _negate(l / _LEVEL_DENOM * 0.3)),
    "ShearY": (shear_y, lambda l: _negate(l / _LEVEL_DENOM * 0.3)),
    "TranslateXRel": (translate_x_rel, lambda l: _negate(l / _LEVEL_DENOM * 0.45)),
    "TranslateYRel": (translate_y_rel, lambda l: _negate(l / _LEVEL_DENOM * 0.45)),
}

_RAND_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
             "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
             "TranslateXRel", "TranslateYRel"]
_RAND_OPS_INC = ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                 "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                 "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
                 "TranslateXRel", "TranslateYRel"]


def parse_randaugment(config: str) -> dict:
    """``'rand-m9-n1-mstd0.4-inc1'`` -> dict(magnitude=9, num_ops=1, magnitude_std=0.4, increasing=True, ...)."""
    parts = config.split("-")
    if parts[0] != "rand":
        raise ConfigError(f"RandAugment config must start with 'rand', got {config!r} "
                         f"(expected e.g. 'rand-m9-n2-mstd0.5-inc1')")
    out = dict(magnitude=10.0, num_ops=2, magnitude_std=0.0, magnitude_max=10.0, increasing=False, prob=0.5)
    for c in parts[1:]:
        m = re.fullmatch(r"([a-z]+)(\d.*)", c)
        if not m:
            raise ConfigError(f"RandAugment config {config!r}: cannot parse {c!r}")
        key, val = m.groups()
        if key == "mstd":
            v = float(val)
            out["magnitude_std"] = float("inf") if v > 100 else v
        elif key == "mmax":
            out["magnitude_max"] = float(val)
        elif key == "inc":
            out["increasing"] = bool(int(val))
        elif key == "m":
            out["magnitude"] = float(val)
        elif key == "n":
            out["num_ops"] = int(val)
        elif key == "p":
            out["prob"] = float(val)
        else:
            raise ConfigError(f"RandAugment config {config!r}: unknown key {key!r} "
                             f"(known: m, n, mstd, mmax, inc, p)")
    return out


class RandAugment:
    def __init__(self, magnitude: float = 10.0, num_ops: int = 2, magnitude_std: float = 0.0,
                 magnitude_max: float = 10.0, increasing: bool = False, prob: float = 0.5,
                 fill=0.5, ops: list[str] | None = None):
        self.magnitude, self.num_ops, self.magnitude_std = magnitude, num_ops, magnitude_std
        self.magnitude_max, self.prob, self.fill = magnitude_max, prob, fill
        self.ops = list(ops) if ops is not None else (_RAND_OPS_INC if increasing else _RAND_OPS)
        unknown = [o for o in self.ops if o not in OPS]
        if unknown:
            raise ConfigError(f"unknown RandAugment ops {unknown}; known: {sorted(OPS)}")

    @classmethod
    def from_config(cls, config: str, mean=None) -> "RandAugment":
        kw = parse_randaugment(config)
        return cls(**kw, fill=tuple(mean) if mean is not None else 0.5)

    def sample_magnitude(self) -> float:
        m = self.magnitude
        if self.magnitude_std == float("inf"):
            m = float(torch.rand(())) * m
        elif self.magnitude_std > 0:
            m = m + self.magnitude_std * float(torch.randn(()))
        return min(max(0.0, m), self.magnitude_max)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        idx = torch.randint(len(self.ops), (self.num_ops,))
        for i in idx.tolist():
            if self.prob < 1.0 and _rand() >= self.prob:
                continue
            fn, to_arg = OPS[self.ops[i]]
            arg = to_arg(self.sample_magnitude()) if to_arg is not None else None
            img = fn(img, arg, fill=self.fill)
        return img

    def __repr__(self):
        return (f"RandAugment(m={self.magnitude}, n={self.num_ops}, mstd={self.magnitude_std}, "
                f"ops={len(self.ops)})")
