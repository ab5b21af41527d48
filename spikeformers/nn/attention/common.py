"""What every attention shares: the stream convention, the head layout, the Q/K/V projections.

The attentions are one class each, with one interface.

Every attention here is built as ``Attention(dim, num_heads=..., stream=..., **options)`` and maps
the block's residual stream ``x[T, B, D, H, W]`` to the increment the block adds back to it, of the
same shape. ``stream`` says which kind of backbone it sits in:

``"membrane"`` (default; Spike-driven Transformer, membrane shortcut)
    ``x`` is the real-valued membrane ``U``; the attention fires it through its own input neuron
    (``shortcut_lif``) and returns the real increment ``BN(W_proj y)``.
``"spike"`` (Spikformer / QKFormer, SEW "ADD" residual of spikes)
    ``x`` is the integer-valued spike stream, used as is (``shortcut_lif`` is an identity); the
    increment is fired, ``SN(BN(W_proj y))`` (``proj_lif``), so the stream stays integer.

Each class has an ``attn_map`` identity module that the attention tensor passes through, so forward
hooks can capture it (for plots) without touching the arithmetic. The registry of plug-ins by name
(``ssa``, ``sdsa``, ``qk_token``, ... including the official Spikformer / QKFormer / SpikingResformer
attentions adapted to this interface) is :mod:`spikeformers.nn.attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ..layers import conv_bn_fire, lif, seq

__all__ = ["STREAMS", "QKVProjections", "check_attention_args", "erode", "heads", "unheads"]

STREAMS = ("membrane", "spike")


def erode(x: torch.Tensor) -> torch.Tensor:
    """SDT's dvs-mode ``Erode``: MaxPool3d(kernel (1,3,3), stride 1, padding (0,1,1)) on a 5-D
    tensor, i.e. dim 0 is the batch, dim 1 the channels, and the 3x3 window runs over the last two
    dims (whatever they mean in the caller's layout, reproduced as in the official code)."""
    return F.max_pool3d(x, kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))


def heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """[T,B,C,H,W] -> [T,B,h,N,d]; channel c goes to head c // d (official ordering)."""
    T, B, C = x.shape[:3]
    return x.flatten(3).transpose(-1, -2).reshape(T, B, -1, h, C // h).permute(0, 1, 3, 2, 4)


def unheads(x: torch.Tensor, shape) -> torch.Tensor:
    """[T,B,h,N,d] -> [T,B,C,H,W] (inverse of :func:`_heads`)."""
    T, B, C, H, W = shape
    return x.transpose(3, 4).reshape(T, B, C, H, W)


def check_attention_args(dim: int, num_heads: int, stream: str) -> None:
    if dim % num_heads:
        raise ConfigError(f"dim {dim} must be divisible by num_heads {num_heads}")
    if stream not in STREAMS:
        raise ConfigError(f"stream must be one of {STREAMS}, got {stream!r}")


class QKVProjections(nn.Module):
    """Shared Q/K/V projections: bias-free 1x1 convs + BN on the input spikes, official names; the
    stream convention (module docstring): ``shortcut_lif`` in, ``proj_conv``/``proj_bn`` and, on
    the spike stream, ``proj_lif`` out."""

    def __init__(self, dim: int, num_heads: int = 8, stream: str = "membrane", neuron=lif, qkv: str = "qkv"):
        super().__init__()
        check_attention_args(dim, num_heads, stream)
        self.num_heads, self.stream = num_heads, stream
        self.shortcut_lif = neuron() if stream == "membrane" else nn.Identity()
        for n in qkv:
            setattr(self, f"{n}_conv", nn.Conv2d(dim, dim, 1, bias=False))
            setattr(self, f"{n}_bn", nn.BatchNorm2d(dim))
        self.attn_map = nn.Identity()
        self.proj_conv = nn.Conv2d(dim, dim, 1)
        self.proj_bn = nn.BatchNorm2d(dim)
        self.proj_lif = neuron() if stream == "spike" else None

    def project(self, n: str, s: torch.Tensor) -> torch.Tensor:
        conv, bn = getattr(self, f"{n}_conv"), getattr(self, f"{n}_bn")
        return seq(lambda z: bn(conv(z)), s)

    def fire(self, n: str, s: torch.Tensor) -> torch.Tensor:
        """``{n}_lif(project(n, s))``, BatchNorm and neuron fused where possible (layers.conv_bn_fire)."""
        return conv_bn_fire(getattr(self, f"{n}_conv"), getattr(self, f"{n}_bn"), getattr(self, f"{n}_lif"), s)

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """``BN(W_proj y + b)``, fired on the spike stream."""
        y = seq(lambda z: self.proj_bn(self.proj_conv(z)), y)
        return self.proj_lif(y) if self.proj_lif is not None else y
