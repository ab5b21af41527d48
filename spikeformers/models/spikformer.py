"""Spikformer (Zhou et al., ICLR 2023, arXiv 2209.15425).

    x [T,B,C,H,W] -> SPS (4 x conv3x3-BN-SN[-MaxPool], then X0 = x + SN(BN(conv3x3(x))))
      -> L x { X <- X + SSA(X);  X <- X + MLP(X) }       (spike "ADD" residuals: X is integer-valued)
      -> mean over tokens -> mean over T -> Linear        -> logits [B, K]

Spiking Self-Attention (SSA), per head (d = D/h), all of Q, K, V binary::

    Q, K, V = SN(BN(W_q X)), SN(BN(W_k X)), SN(BN(W_v X))
    SSA(X)  = SN(BN(W_p SN_0.5( Q K^T V * s ) + b_p))        s = 0.125 (0.25 in the DVS file)

Q K^T V is a product of binary matrices, so every intermediate is an exact multiple of 2^-3 in
float32 and the order of the two products cannot change a spike. MLP: SN(BN(W2 SN(BN(W1 X + b1)) + b2)),
D -> 4D -> D. Every neuron is the SpikingJelly 0.0.0.0.12 multi-step LIF (tau 2, threshold 1, hard
reset to 0, detached reset, Sigmoid(4) surrogate); the attention neuron fires at 0.5.

The official repository has three model files with different layer types; a spike can flip
when the summation order of a layer changes, so ``layout`` reproduces each one's layers exactly:

    layout     file                   q/k/v/proj          MLP                  SPS pooling   scale
    "cifar"    cifar10/model.py       nn.Linear (+bias)   nn.Linear + BN1d     stages 3, 4   0.125
    "imagenet" imagenet/model.py      Conv1d k=1          Conv2d 1x1 + BN2d    all 4         0.125
    "dvs"      cifar10dvs/model.py    Conv1d k=1          Conv1d k=1 + BN1d    all 4         0.25

State-dict names are the official ones. The official blocks also carry LayerNorms ``norm1`` /
``norm2`` (and the DVS file ``pos_embed`` and ``norm``) that the forward never uses; ours omit them
(the paper's parameter counts exclude them too) and the converter drops them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.attention import ConvSSA, LinearSSA, build_attention
from ..nn.layers import SPS, ConvMLP, LinearMLP, SpikingModel, stem_out_size, token_mean
from .registry import register_model

__all__ = ["Spikformer", "Block"]

_LAYOUTS = ("cifar", "imagenet", "dvs")


class Block(nn.Module):
    """X <- X + SSA(X); X <- X + MLP(X).

    ``attention``: None or ``"ssa"`` builds the layout's official SSA; any other plug-in name
    (:mod:`spikeformers.nn.attention`) builds that attention on the spike stream (its input is
    the integer-valued stream as is, its increment is fired), seen as a ``[T,B,D,H,W]`` token map.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, layout: str, scale: float,
                 attention: str | None = None, attn_kwargs: dict | None = None, num_tokens: int | None = None):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.plugin = attention not in (None, "ssa")
        if self.plugin:
            self.attn = build_attention(attention, dim, num_heads, stream="spike", num_tokens=num_tokens,
                                        **(attn_kwargs or {}))
        elif attn_kwargs:
            raise ConfigError(f"attn_kwargs {attn_kwargs} need a plug-in attention; the official SSA takes attn_scale")
        if layout == "cifar":
            if not self.plugin:
                self.attn = LinearSSA(dim, num_heads, scale)
            self.mlp = LinearMLP(dim, hidden)
        else:
            if not self.plugin:
                self.attn = ConvSSA(dim, num_heads, scale)
            self.mlp = ConvMLP(dim, hidden, conv_dim=2 if layout == "imagenet" else 1)
        self.layout = layout

    def _plugin(self, x, grid):
        if self.layout == "cifar":  # [T,B,N,D]
            T, B, N, D = x.shape
            y = self.attn(x.transpose(-1, -2).reshape(T, B, D, *grid))
            return y.flatten(3).transpose(-1, -2)
        T, B, D, N = x.shape        # [T,B,D,N]
        return self.attn(x.reshape(T, B, D, *grid)).flatten(3)

    def forward(self, x, grid):
        x = x + (self._plugin(x, grid) if self.plugin else self.attn(x))
        return x + (self.mlp(x) if self.layout == "cifar" else self.mlp(x, grid))


class Spikformer(SpikingModel):
    """Spikformer-L-D: ``depths`` blocks of width ``embed_dim`` with ``num_heads`` heads.

    ``layout`` picks the official file whose layers are reproduced (see the module docstring);
    ``attn_scale`` defaults to that file's constant. ``attention`` (None: the official SSA) swaps
    in any plug-in attention by name, ``attn_kwargs`` its options (see :class:`Block`).
    """

    family = "spikformer"

    def __init__(self, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 512, depths: int = 8, num_heads: int = 8, mlp_ratio: float = 4.0,
                 T: int = 4, layout: str = "imagenet", attn_scale: float | None = None,
                 attention: str | None = None, attn_kwargs: dict | None = None):
        super().__init__()
        if layout not in _LAYOUTS:
            raise ConfigError(f"Spikformer layout must be one of {_LAYOUTS}, got {layout!r}")
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.T, self.in_chans, self.img_size, self.num_classes = T, in_chans, img_size, num_classes
        self.layout = layout
        scale = attn_scale if attn_scale is not None else (0.25 if layout == "dvs" else 0.125)
        pooling = "0011" if layout == "cifar" else "1111"
        self.patch_embed = SPS(in_chans, embed_dim, pooling, output="spike")
        grid = stem_out_size(img_size, pooling)
        self.attention = attention
        self.block = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, layout, scale, attention, attn_kwargs,
                                         num_tokens=grid * grid)
                                   for _ in range(depths))
        self.head = nn.Linear(embed_dim, num_classes)
        for m in self.modules():  # the official init: trunc-normal Linear weights, zero biases
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, C, H, W] -> token-mean features [T, B, D]."""
        x = self.patch_embed(x)                          # [T, B, D, H', W']
        grid = tuple(x.shape[-2:])
        if self.layout == "cifar":
            x = x.flatten(-2).transpose(-1, -2)          # [T, B, N, D]
        else:
            x = x.flatten(-2)                            # [T, B, D, N]
        for blk in self.block:
            x = blk(x, grid)
        return x.mean(2) if self.layout == "cifar" else token_mean(x, 1)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(0))


_SRC = "ZK-Zhou/spikformer:"
_CIFAR = dict(img_size=32, in_chans=3, num_classes=10, T=4, mlp_ratio=4.0, layout="cifar")
_IMAGENET = dict(img_size=224, in_chans=3, num_classes=1000, T=4, mlp_ratio=4.0, layout="imagenet")
_DVS = dict(img_size=128, in_chans=2, T=16, mlp_ratio=4.0, layout="dvs")


def _spikformer(**kw) -> Spikformer:
    return Spikformer(**kw)


def _meta(params, top1, path):
    return {"paper_params": params, "paper_top1": top1, "source": _SRC + path}


@register_model(**_CIFAR, embed_dim=256, depths=4, num_heads=8,
                meta=_meta("4.15 M", {"cifar10": 93.94, "cifar100": 75.96}, "cifar10/model.py:Spikformer"))
def spikformer_4_256_cifar(**kw):
    """Spikformer-4-256, CIFAR (heads not stated in the paper; 8 here, no effect on the count)."""
    return _spikformer(**kw)


@register_model(**_CIFAR, embed_dim=384, depths=2, num_heads=12,
                meta=_meta("5.76 M", {"cifar10": 94.80, "cifar100": 76.95}, "cifar10/model.py:Spikformer"))
def spikformer_2_384_cifar(**kw):
    """Spikformer-2-384, CIFAR."""
    return _spikformer(**kw)


@register_model(**_CIFAR, embed_dim=384, depths=4, num_heads=12,
                meta=_meta("9.32 M", {"cifar10": 95.19, "cifar100": 77.86}, "cifar10/model.py:Spikformer"))
def spikformer_4_384_cifar(**kw):
    """Spikformer-4-384, CIFAR (``cifar10.yml``; 95.51 / 78.21 with 400 epochs)."""
    return _spikformer(**kw)


@register_model(**_IMAGENET, embed_dim=384, depths=8, num_heads=8,
                meta=_meta("16.81 M", {"imagenet": 70.24}, "imagenet/model.py:Spikformer"))
def spikformer_8_384(**kw):
    """Spikformer-8-384, ImageNet 224, T=4."""
    return _spikformer(**kw)


@register_model(**_IMAGENET, embed_dim=512, depths=6, num_heads=8,
                meta=_meta("23.37 M", {"imagenet": 72.46}, "imagenet/model.py:Spikformer"))
def spikformer_6_512(**kw):
    """Spikformer-6-512, ImageNet 224, T=4."""
    return _spikformer(**kw)


@register_model(**_IMAGENET, embed_dim=512, depths=8, num_heads=8,
                meta=_meta("29.68 M", {"imagenet": 73.38}, "imagenet/model.py:Spikformer"))
def spikformer_8_512(**kw):
    """Spikformer-8-512, ImageNet 224, T=4 (the official factory's configuration)."""
    return _spikformer(**kw)


@register_model(**_IMAGENET, embed_dim=512, depths=10, num_heads=8,
                meta=_meta("36.01 M", {"imagenet": 73.68}, "imagenet/model.py:Spikformer"))
def spikformer_10_512(**kw):
    """Spikformer-10-512, ImageNet 224, T=4."""
    return _spikformer(**kw)


@register_model(**_IMAGENET, embed_dim=768, depths=8, num_heads=12,
                meta=_meta("66.34 M", {"imagenet": 74.81}, "imagenet/model.py:Spikformer"))
def spikformer_8_768(**kw):
    """Spikformer-8-768, ImageNet 224, T=4 (12 heads, as the Spikingformer energy tool assumes)."""
    return _spikformer(**kw)


@register_model(**_DVS, num_classes=10, embed_dim=256, depths=2, num_heads=16,
                meta=_meta("2.57 M", {"cifar10dvs": 80.9, "cifar10dvs@T10": 78.9}, "cifar10dvs/model.py:Spikformer"))
def spikformer_2_256_cifar10dvs(**kw):
    """Spikformer-2-256, CIFAR10-DVS 128x128 frames, T=16 (scale 0.25, 16 heads: the official factory)."""
    return _spikformer(**kw)


@register_model(**_DVS, num_classes=11, embed_dim=256, depths=2, num_heads=8,
                meta=_meta("2.57 M", {"dvs128": 98.3, "dvs128@T10": 96.9}, "cifar10dvs/model.py:Spikformer"))
def spikformer_2_256_gesture(**kw):
    """Spikformer-2-256, DVS128 Gesture, T=16. The repository has no Gesture code: this is the DVS
    file with 8 heads and 11 classes; the paper's extra 1-D max-pool after Q and K is not included."""
    return _spikformer(**kw)
