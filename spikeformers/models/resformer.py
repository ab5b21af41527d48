"""SpikingResformer (Shi, Hao, Yu, CVPR 2024, arXiv 2403.14302).

A hierarchical spiking transformer whose residual stream is *real-valued* (no neuron on the
stream itself): every block fires its own input spikes and adds its output back.

    stem     ImageNet: Conv7x7/2 -> BN -> MaxPool3x3/2 (no neuron);  CIFAR/DVS: Conv3x3/1 -> BN
    stage i  [Downsample (SN -> Conv3x3/2 -> BN), i > 0] then blocks X <- DSSA(X); X <- GWFFN(X)
    head     mean over H*W of the real-valued stream -> Linear (no bias) per step -> mean over T

Dual Spike Self-Attention (DSSA, per head, d = C/h channels, p the patch size)::

    Xs   = SN_in(X)                                  spikes [T,B,h,d,HW]
    F    = BN(Conv_pxp/stride p(Xs))  split per head into F1, F2  [T,B,h,d,N']
    A    = SN_attn( F1^T Xs / sqrt(r_X * d) )        spikes [T,B,h,N',HW]
    O    = SN_out ( F2  A  / sqrt(r_A * N') )        spikes [T,B,C,H,W]
    out  = BN(Conv1x1(O)) + X

``r_X`` and ``r_A`` are per-head firing rates tracked by an exponential moving average (momentum
0.999) in the buffers ``firing_rate_x`` / ``firing_rate_attn`` during training and frozen in eval,
like BatchNorm statistics. The first training batch initialises an all-zero buffer.

Group-wise spiking FFN (GWFFN)::

    U = BN(Conv1x1(SN(X)))                      C -> 4C
    G = BN(GroupConv3x3(SN(U))) + U             groups of ``group_size`` channels
    out = BN(Conv1x1(SN(G))) + X                4C -> C

Neurons: SpikingJelly 0.0.0.0.14 ``activation_based`` LIF (tau 2, threshold 1, hard reset to 0,
detached reset) with the ATan(alpha=2) surrogate; the DVS-Gesture model uses PLIF (learnable
``w``, tau = 1/sigmoid(w)). Module and state-dict names are the official ones minus the
``.bn`` wrapper level of the official BatchNorm (``norm.bn.weight`` -> ``norm.weight``).

Official quirks, behind flags (the converter sets them; our own variants default to the
correct behaviour):

* ``fixed_tokens``: the official DSSA divides by the pooled token count N' computed once from
  the constructor's ``img_size``; at any other input size that constant is wrong. With
  ``fixed_tokens=False`` (ours) N' is the actual pooled token count of the input.
* firing-rate buffers that were never trained are zero, and the official eval scale is then
  1/sqrt(0) = inf. Ours fall back to the current batch's firing rate for such heads (a loaded or
  trained buffer is always used as is, so official checkpoints give identical numbers).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.attention.dssa import DSSA, resformer_neuron
from ..nn.layers import SpikingModel, seq
from ..nn.neurons import LIF, PLIF
from .registry import register_model

__all__ = ["SpikingResformer", "DSSA", "GWFFN", "DownsampleLayer"]


class SeqConvBN(nn.Sequential):
    """[SN ->] conv -> BN on ``[T,B,C,H,W]`` (conv and BN on the merged T*B view). Indices match the
    official ``nn.Sequential`` (neuron at 0 when present)."""

    def forward(self, x):
        for m in self:
            x = m(x) if isinstance(m, (LIF, PLIF)) else seq(m, x)
        return x


class GWFFN(nn.Module):
    """Group-wise spiking FFN with its two residuals (formula in the module docstring)."""

    def __init__(self, dim: int, ratio: int = 4, group_size: int = 64, neuron=None):
        super().__init__()
        neuron = neuron or resformer_neuron("LIF")
        inner = dim * ratio
        if inner % group_size:
            raise ConfigError(f"GWFFN hidden width {inner} must be divisible by group_size {group_size}")
        self.up = SeqConvBN(neuron(), nn.Conv2d(dim, inner, 1, bias=False), nn.BatchNorm2d(inner))
        self.conv = nn.ModuleList([SeqConvBN(
            neuron(), nn.Conv2d(inner, inner, 3, 1, 1, groups=inner // group_size, bias=False),
            nn.BatchNorm2d(inner))])
        self.down = SeqConvBN(neuron(), nn.Conv2d(inner, dim, 1, bias=False), nn.BatchNorm2d(dim))

    def forward(self, x):
        u = self.up(x)
        g = u
        for m in self.conv:
            g = m(g)
        return self.down(g + u) + x


class DownsampleLayer(nn.Module):
    """SN -> Conv3x3 stride 2 (no bias) -> BN."""

    def __init__(self, in_dim: int, out_dim: int, neuron=None):
        super().__init__()
        neuron = neuron or resformer_neuron("LIF")
        self.conv = nn.Conv2d(in_dim, out_dim, 3, 2, 1, bias=False)
        self.norm = nn.BatchNorm2d(out_dim)
        self.activation = neuron()

    def forward(self, x):
        return seq(lambda z: self.norm(self.conv(z)), self.activation(x))


class SpikingResformer(SpikingModel):
    """SpikingResformer. ``depths[i]`` (DSSA, GWFFN) pairs per stage at width ``planes[i]`` with
    ``num_heads[i]`` heads and DSSA patch size ``patch_sizes[i]``.

    ``stem``: ``"imagenet"`` (Conv7x7/2, BN, MaxPool/2) or ``"cifar"`` (Conv3x3/1, BN; also the
    DVS-Gesture stem). ``neuron``: ``"LIF"`` or ``"PLIF"``. ``per_step_logits=True`` returns the
    official ``[T, B, K]`` per-step logits instead of their mean ``[B, K]``. ``fixed_tokens`` is the
    official N' quirk (see the module docstring).
    """

    family = "spikingresformer"

    def __init__(self, planes=(64, 192, 384), num_heads=(1, 3, 6), patch_sizes=(4, 2, 1),
                 depths=(1, 2, 3), img_size: int = 224, T: int = 4, in_chans: int = 3,
                 num_classes: int = 1000, stem: str = "imagenet", group_size: int = 64,
                 neuron: str = "LIF", per_step_logits: bool = False, fixed_tokens: bool = False):
        super().__init__()
        if not len(planes) == len(num_heads) == len(patch_sizes) == len(depths):
            raise ConfigError("planes, num_heads, patch_sizes and depths must have the same length, got "
                             f"{len(planes)}, {len(num_heads)}, {len(patch_sizes)}, {len(depths)}")
        if stem not in ("imagenet", "cifar"):
            raise ConfigError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.T, self.in_chans, self.img_size, self.num_classes = T, in_chans, img_size, num_classes
        self.per_step_logits = per_step_logits
        make = resformer_neuron(neuron)
        if stem == "imagenet":
            self.prologue = nn.Sequential(nn.Conv2d(in_chans, planes[0], 7, 2, 3, bias=False),
                                          nn.BatchNorm2d(planes[0]),
                                          nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
            size = img_size // 4
        else:
            self.prologue = nn.Sequential(nn.Conv2d(in_chans, planes[0], 3, 1, 1, bias=False),
                                          nn.BatchNorm2d(planes[0]))
            size = img_size
        self.layers = nn.Sequential()
        for i, (dim, heads, p, depth) in enumerate(zip(planes, num_heads, patch_sizes, depths)):
            stage = nn.Sequential()
            if i > 0:
                stage.append(DownsampleLayer(planes[i - 1], dim, neuron=make))
                size //= 2
            for _ in range(depth):
                stage.append(DSSA(dim, heads, p, tokens=(size // p) ** 2, fixed_tokens=fixed_tokens,
                                  neuron=make))
                stage.append(GWFFN(dim, group_size=group_size, neuron=make))
            self.layers.append(stage)
        self.classifier = nn.Linear(planes[-1], num_classes, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:  # x: [T, B, C, H, W]
        x = seq(self.prologue, x)
        x = self.layers(x)
        x = seq(lambda z: nn.functional.adaptive_avg_pool2d(z, 1), x).flatten(2)  # [T, B, C]
        logits = self.classifier(x)                                                # [T, B, K]
        return logits if self.per_step_logits else logits.mean(0)

    def no_weight_decay(self) -> set[str]:
        return {n + ".w" for n, m in self.named_modules() if isinstance(m, PLIF)}


_SRC = "xyshi2000/SpikingResformer:models/spikingresformer.py:"
_STAGES = dict(depths=(1, 2, 3), patch_sizes=(4, 2, 1))
_IMAGENET = dict(img_size=224, in_chans=3, num_classes=1000, T=4, stem="imagenet", **_STAGES)


def _resformer(**kw) -> SpikingResformer:
    return SpikingResformer(**kw)


# Paper parameter counts exclude BatchNorm (folded into the convs at inference).
@register_model(**_IMAGENET, planes=(64, 192, 384), num_heads=(1, 3, 6),
                meta={"paper_top1": {"imagenet": 74.34}, "paper_params": "11.14 M (no BN)",
                      "source": _SRC + "spikingresformer_ti"})
def spikingresformer_ti(**kw):
    """SpikingResformer-Ti, ImageNet 224, T=4."""
    return _resformer(**kw)


@register_model(**_IMAGENET, planes=(64, 256, 512), num_heads=(1, 4, 8),
                meta={"paper_top1": {}, "paper_params": "17.76 M (no BN)",
                      "source": _SRC + "spikingresformer_s"})
def spikingresformer_s(**kw):
    """SpikingResformer-S, ImageNet 224, T=4 (paper accuracy not recovered)."""
    return _resformer(**kw)


@register_model(**_IMAGENET, planes=(64, 384, 768), num_heads=(1, 6, 12),
                meta={"paper_top1": {"imagenet": 77.24}, "paper_params": "35.52 M (no BN)",
                      "source": _SRC + "spikingresformer_m"})
def spikingresformer_m(**kw):
    """SpikingResformer-M, ImageNet 224, T=4."""
    return _resformer(**kw)


@register_model(**_IMAGENET, planes=(128, 512, 1024), num_heads=(2, 8, 16),
                meta={"paper_top1": {"imagenet": 78.77, "imagenet@288": 79.40}, "paper_params": "60.27 M (no BN)",
                      "source": _SRC + "spikingresformer_l"})
def spikingresformer_l(**kw):
    """SpikingResformer-L, ImageNet 224, T=4."""
    return _resformer(**kw)


@register_model(img_size=32, in_chans=3, num_classes=10, T=4, stem="cifar", planes=(64, 192, 384),
                num_heads=(1, 3, 6), **_STAGES,
                meta={"paper_top1": {}, "paper_params": "10.75 M (no BN)",
                      "source": _SRC + "spikingresformer_cifar"})
def spikingresformer_ti_cifar(**kw):
    """SpikingResformer-Ti* for CIFAR (3x3 stem, no pooling), trained directly, T=4."""
    return _resformer(**kw)


@register_model(img_size=64, in_chans=3, num_classes=11, T=16, stem="cifar", planes=(32, 96, 192),
                num_heads=(1, 3, 6), group_size=32, neuron="PLIF", **_STAGES,
                meta={"paper_top1": {}, "paper_params": "2.69 M (no BN)",
                      "source": _SRC + "spikingresformer_dvsg"})
def spikingresformer_dvsg(**kw):
    """SpikingResformer for DVS128 Gesture: 64x64 frames with 3 channels (2 polarities + their sum),
    PLIF neurons, T=16."""
    return _resformer(**kw)
