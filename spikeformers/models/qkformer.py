"""QKFormer: hierarchical spiking transformer with Q-K attention (Zhou et al., NeurIPS 2024,
arXiv 2403.16552).

    x [T,B,C,H,W] -> patch_embed1 -> stage1 (QKFormer blocks)
                  -> patch_embed2 -> stage2 (QKFormer blocks)
                 [-> patch_embed3] -> stage3 (Spikformer blocks)
                  -> mean over tokens -> mean over T -> Linear          -> logits [B, K]

All residuals add spikes (SEW "ADD"), so the stream is integer-valued. Every neuron is the
SpikingJelly 0.0.0.0.12 multi-step LIF (tau 2, threshold 1, hard reset, Sigmoid(4) surrogate);
the attention neuron fires at 0.5.

Q-K token attention (QKTA, :class:`~spikeformers.nn.attention.TokenQKAttention`), per head with d channels::

    Q, K = SN(BN(W_q X)), SN(BN(W_k X))          binary [T,B,h,d,N]
    A    = SN_0.5( sum over the d channels of Q )  one binary token mask per head [T,B,h,1,N]
    out  = SN(BN(W_p (A * K) + b_p))

The Spikformer block of the last stage is Spikformer's SSA (:class:`~spikeformers.nn.attention.ConvSSA`, scale 0.125)
and MLP (1x1 convs, ratio ``mlp_ratio``).

Spiking patch embedding with deformed shortcut (SPEDS): Y = F(X) + SN(BN(W_d X)), W_d a strided
1x1 conv. The three official files differ (``layout``):

    layout      file                     stages (widths, blocks)             F(X) of stages 2/3
    "imagenet"  imagenet/qkformer.py     D/4, D/2, D;  1, 2, L-3             conv-BN-MP-SN, conv-BN-SN
    "cifar"     cifar10/model.py         D/4, D/2, D;  1, 1, L-2             conv-BN-SN, conv-BN-MP-SN
    "dvs"       cifar10-dvs/, dvs128-gesture/model.py   D/2, D;  1, 1       conv-BN-SN, conv-BN-MP-SN

with the first stage's stem (``patch_embed1``): ImageNet  a = SN(MP(BN(C3 x))), b = SN(MP(BN(C3 a))),
out = SN(BN(C3 b)) + SN(BN(C1/2 a)); CIFAR  a = SN(BN(C3 x)), out = SN(BN(C3 a)) + SN(BN(C1 a))
(no downsampling); DVS  s0 = SN(BN(C3 x)), s1..s3 = SN(MP(BN(C3 .))), out = s3 + SN(BN(C1/4 s1)).
The CIFAR and DVS files hard-code the head count (8 and 16) whatever ``num_heads`` says.

Official quirk behind a flag: ``proj_lif_over_tb`` (default False) runs the output neuron of every
stage-3 SSA over the merged T*B axis, as all official QKFormer files do: the membrane
leaks from one sample into the next, so outputs depend on batch size and order. Every published
QKFormer accuracy includes it; the converter sets it.

State-dict names follow the ImageNet file (``attn``, ``fc1_*`` / ``fc2_*``, ``proj3_*`` / ``proj4_*``);
the converter maps the CIFAR / DVS names (``ssa``, ``mlp1_*`` / ``mlp2_*``, DVS ``patch_embed2.proj_*``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.attention import ConvSSA, TokenQKAttention
from ..nn.layers import (
    ConvMLP,
    MaxPool,
    SpikingModel,
    conv_bn_fire,
    lif,
    seq_once,
    token_mean,
)
from .registry import register_model

__all__ = ["QKFormer", "QKFormerBlock", "SpikformerBlock"]

_LAYOUTS = ("imagenet", "cifar", "dvs")


def _unit(parent: nn.Module, name: str, cin: int, cout: int, k: int = 3, stride: int = 1):
    """Add one SPEDS unit conv -> BN [-> MaxPool] -> SN as ``{name}_conv`` / ``_bn`` / ``_lif``."""
    setattr(parent, f"{name}_conv", nn.Conv2d(cin, cout, k, stride, k // 2, bias=False))
    setattr(parent, f"{name}_bn", nn.BatchNorm2d(cout))
    setattr(parent, f"{name}_lif", lif())


def _run(parent: nn.Module, name: str, x: torch.Tensor, pool: bool = False) -> torch.Tensor:
    conv, bn = getattr(parent, f"{name}_conv"), getattr(parent, f"{name}_bn")
    if not pool:
        return conv_bn_fire(conv, bn, getattr(parent, f"{name}_lif"), x)
    y = seq_once(lambda z: parent.pool(bn(conv(z))), x, conv, bn)   # pooled before any repeat over T
    return getattr(parent, f"{name}_lif")(y.reshape(x.shape[0], -1, *y.shape[1:]))


class PatchEmbedInit(nn.Module):
    """``patch_embed1`` (formulas in the module docstring) for width ``dim``."""

    def __init__(self, in_chans: int, dim: int, layout: str):
        super().__init__()
        self.layout = layout
        self.pool = MaxPool()
        if layout == "imagenet":
            _unit(self, "proj", in_chans, dim // 2)
            _unit(self, "proj1", dim // 2, dim)
            _unit(self, "proj2", dim, dim)
            _unit(self, "proj_res", dim // 2, dim, k=1, stride=2)
        elif layout == "cifar":
            _unit(self, "proj", in_chans, dim // 2)
            _unit(self, "proj1", dim // 2, dim)
            _unit(self, "proj_res", dim // 2, dim, k=1, stride=1)
        else:
            _unit(self, "proj", in_chans, dim // 8)
            _unit(self, "proj1", dim // 8, dim // 4)
            _unit(self, "proj2", dim // 4, dim // 2)
            _unit(self, "proj3", dim // 2, dim)
            _unit(self, "proj_res", dim // 4, dim, k=1, stride=4)

    def forward(self, x):
        if self.layout == "imagenet":
            a = _run(self, "proj", x, pool=True)
            out = _run(self, "proj2", _run(self, "proj1", a, pool=True))
            return out + _run(self, "proj_res", a)
        if self.layout == "cifar":
            a = _run(self, "proj", x)
            return _run(self, "proj1", a) + _run(self, "proj_res", a)
        s1 = _run(self, "proj1", _run(self, "proj", x), pool=True)
        s3 = _run(self, "proj3", _run(self, "proj2", s1, pool=True), pool=True)
        return s3 + _run(self, "proj_res", s1)


class PatchEmbeddingStage(nn.Module):
    """``patch_embed2`` / ``patch_embed3``: width dim/2 -> dim, halves the resolution.
    ImageNet: SN(MP(BN(C3 X))) then SN(BN(C3 .)); CIFAR/DVS: SN(BN(C3 X)) then SN(MP(BN(C3 .)));
    shortcut SN(BN(C1/2 X))."""

    def __init__(self, dim: int, layout: str):
        super().__init__()
        self.pool_first = layout == "imagenet"
        self.pool = MaxPool()
        _unit(self, "proj3", dim // 2, dim)
        _unit(self, "proj4", dim, dim)
        _unit(self, "proj_res", dim // 2, dim, k=1, stride=2)

    def forward(self, x):
        y = _run(self, "proj3", x, pool=self.pool_first)
        y = _run(self, "proj4", y, pool=not self.pool_first)
        return y + _run(self, "proj_res", x)


class QKFormerBlock(nn.Module):
    """X <- X + QKTA(X); X <- X + MLP(X)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.tssa = TokenQKAttention(dim, num_heads)
        self.mlp = ConvMLP(dim, int(dim * mlp_ratio), conv_dim=2)

    def forward(self, x):
        T, B, C, H, W = x.shape
        x = x + self.tssa(x)
        return x + self.mlp(x.flatten(3), (H, W)).reshape(T, B, C, H, W)


class SpikformerBlock(nn.Module):
    """X <- X + SSA(X); X <- X + MLP(X) (Spikformer's block)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, proj_lif_over_tb: bool):
        super().__init__()
        self.attn = ConvSSA(dim, num_heads, 0.125, proj_lif_over_tb=proj_lif_over_tb)
        self.mlp = ConvMLP(dim, int(dim * mlp_ratio), conv_dim=2)

    def forward(self, x):
        T, B, C, H, W = x.shape
        x = x + self.attn(x.flatten(3)).reshape(T, B, C, H, W)
        return x + self.mlp(x.flatten(3), (H, W)).reshape(T, B, C, H, W)


class QKFormer(SpikingModel):
    """QKFormer (HST-L-D). ``depths`` is the official total L (stage block counts in the module
    docstring; ignored by the "dvs" layout, which always has one block per stage)."""

    family = "qkformer"

    def __init__(self, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 512, depths: int = 10, num_heads: int = 8, mlp_ratio: float = 4.0,
                 T: int = 4, layout: str = "imagenet", proj_lif_over_tb: bool = False):
        super().__init__()
        if layout not in _LAYOUTS:
            raise ConfigError(f"QKFormer layout must be one of {_LAYOUTS}, got {layout!r}")
        self.T, self.in_chans, self.img_size, self.num_classes = T, in_chans, img_size, num_classes
        self.layout = layout
        D, h = embed_dim, num_heads
        if layout == "dvs":
            widths, blocks = [D // 2, D], [1, 1]
        else:
            widths = [D // 4, D // 2, D]
            blocks = [1, 2, depths - 3] if layout == "imagenet" else [1, 1, depths - 2]
            if blocks[-1] < 1:
                raise ConfigError(f"QKFormer {layout} needs depths >= {4 if layout == 'imagenet' else 3}, got {depths}")
        for w in widths:
            if w % h:
                raise ConfigError(f"QKFormer stage width {w} must be divisible by num_heads {h}")
        self.patch_embed1 = PatchEmbedInit(in_chans, widths[0], layout)
        self.stage1 = nn.ModuleList(QKFormerBlock(widths[0], h, mlp_ratio) for _ in range(blocks[0]))
        self.patch_embed2 = PatchEmbeddingStage(widths[1], layout)
        if layout == "dvs":
            self.stage2 = nn.ModuleList(SpikformerBlock(widths[1], h, mlp_ratio, proj_lif_over_tb)
                                        for _ in range(blocks[1]))
        else:
            self.stage2 = nn.ModuleList(QKFormerBlock(widths[1], h, mlp_ratio) for _ in range(blocks[1]))
            self.patch_embed3 = PatchEmbeddingStage(widths[2], layout)
            self.stage3 = nn.ModuleList(SpikformerBlock(widths[2], h, mlp_ratio, proj_lif_over_tb)
                                        for _ in range(blocks[2]))
        self.head = nn.Linear(D, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, C, H, W] -> token-mean features [T, B, D]."""
        x = self.patch_embed1(x)
        for blk in self.stage1:
            x = blk(x)
        x = self.patch_embed2(x)
        for blk in self.stage2:
            x = blk(x)
        if self.layout != "dvs":
            x = self.patch_embed3(x)
            for blk in self.stage3:
                x = blk(x)
        return token_mean(x)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(0))


_SRC = "zhouchenlin2096/QKFormer:"
_IMAGENET = dict(img_size=224, in_chans=3, num_classes=1000, T=4, mlp_ratio=4.0, layout="imagenet", depths=10)
_DVS = dict(img_size=128, in_chans=2, T=16, embed_dim=256, depths=2, num_heads=16, layout="dvs")


def _qkformer(**kw) -> QKFormer:
    return QKFormer(**kw)


def _meta(params, top1, path):
    return {"paper_params": params, "paper_top1": top1, "source": _SRC + path}


@register_model(img_size=32, in_chans=3, num_classes=10, T=4, embed_dim=384, depths=4, num_heads=8,
                mlp_ratio=4.0, layout="cifar",
                meta=_meta("6.74 M", {"cifar10": 96.18, "cifar100": 81.15}, "cifar10/model.py:spiking_transformer"))
def qkformer_4_384_cifar(**kw):
    """QKFormer HST-4-384, CIFAR, T=4."""
    return _qkformer(**kw)


@register_model(**_IMAGENET, embed_dim=384, num_heads=6,
                meta=_meta("16.47 M", {"imagenet": 78.80}, "imagenet/qkformer.py:QKFormer_10_384"))
def qkformer_10_384(**kw):
    """QKFormer HST-10-384, ImageNet 224, T=4."""
    return _qkformer(**kw)


@register_model(**_IMAGENET, embed_dim=512, num_heads=8,
                meta=_meta("29.08 M", {"imagenet": 82.04}, "imagenet/qkformer.py:QKFormer_10_512"))
def qkformer_10_512(**kw):
    """QKFormer HST-10-512, ImageNet 224, T=4."""
    return _qkformer(**kw)


@register_model(**_IMAGENET, embed_dim=768, num_heads=12,
                meta=_meta("64.96 M", {"imagenet": 84.22, "imagenet@288": 85.25, "imagenet@384": 85.65},
                           "imagenet/qkformer.py:QKFormer_10_768"))
def qkformer_10_768(**kw):
    """QKFormer HST-10-768, ImageNet 224, T=4."""
    return _qkformer(**kw)


@register_model(**_DVS, num_classes=10, mlp_ratio=1.0,
                meta=_meta("1.50 M", {"cifar10dvs": 84.0, "cifar10dvs@T10": 83.8}, "cifar10-dvs/model.py:QKFormer"))
def qkformer_2_256_cifar10dvs(**kw):
    """QKFormer HST-2-256, CIFAR10-DVS 128x128 frames, T=16 (MLP ratio 1, as the official factory)."""
    return _qkformer(**kw)


@register_model(**_DVS, num_classes=11, mlp_ratio=4.0,
                meta=_meta("1.50 M (the official file has 2.00 M)", {"dvs128": 98.6, "dvs128@T10": 98.3},
                           "dvs128-gesture/model.py:QKFormer"))
def qkformer_2_256_gesture(**kw):
    """QKFormer HST-2-256, DVS128 Gesture, T=16 (MLP ratio 4, as the official Gesture file)."""
    return _qkformer(**kw)
