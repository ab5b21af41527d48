"""Spiking attentions as plug-ins: one name each, one interface, any backbone that supports it.

``build_attention(name, dim, num_heads, stream=..., num_tokens=..., **options)`` builds the
attention ``name``; every plug-in maps the block's stream ``x[T,B,D,H,W]`` to the increment the
block adds to it (see :mod:`spikeformers.attention` for the ``stream`` convention: ``"membrane"``
in the Spike-driven Transformer, ``"spike"`` in Spikformer). The backbones take ``attention=NAME``
and ``attn_kwargs={...}``::

    create_model("sdt_2_256_cifar", attention="statten")
    create_model("spikformer_4_256_cifar", attention="a2os2a")

======================  ===============================================================  =========
name                    attention (class)                                                 where
======================  ===============================================================  =========
``ssa``                 Spikformer SSA, Q (K^T V) * 0.125 (:class:`SSA` over             official
                        ``spikformer.ConvSSA``)
``sdsa``                Spike-driven self-attention (``attention.SpikeDrivenSelfAttention``)  official
``qk_token``            QKFormer Q-K token attention (:class:`QKToken` over                official
                        ``qkformer.TokenQKAttention``)
``qk_channel``          QKFormer Q-K channel attention (``qkformer.ChannelQKAttention``)   [I]
``dssa``                SpikingResformer dual spike self-attention (:class:`DSSAPlugin`    official
                        over ``resformer.DSSA``)
``a2os2a``              A²OS²A, binary Q, ReLU K, ternary V (``attention.A2OS2A``)          [S]
``statten``             STAtten chunked spatial-temporal Q (K^T V) (``attention.SpatioTemporalAttention``)
``stmixer``             STMixer learned token mixing (``attention.SpikingTokenMixer``)
``ms``                  MSViT multi-scale Q-K token attention (:class:`MultiScaleTokenAttention`)
``ds2ta``               DS2TA attenuated attention + denoiser (``attention.AttenuatedSpatioTemporalAttention``) [I]
======================  ===============================================================  =========

The official classes keep their official numerics (tests/test_zoo_official.py); the adapters here
only add the input neuron of the membrane stream and switch off the output neuron there
(``proj_neuron=False`` / ``residual=False``), both flags that default to the official behaviour.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import (STREAMS, A2OS2A, AttenuatedSpatioTemporalAttention, SpatioTemporalAttention,
                         SpikeDrivenSelfAttention, SpikingTokenMixer, check_attention_args)
from ..layers import lif, seq
from .qkformer import ChannelQKAttention, TokenQKAttention
from .resformer import DSSA
from .spikformer import ConvSSA

__all__ = ["ATTENTIONS", "build_attention", "SSA", "QKToken", "QKChannel", "MultiScaleTokenAttention",
           "DSSAPlugin"]


class SSA(ConvSSA):
    """Spikformer's Spiking Self-Attention (``spikformer.ConvSSA``, the ImageNet/DVS file's layers)
    on the plug-in interface: ``SN_0.5(Q (K^T V) * scale)`` then the projection; on the membrane
    stream the input is fired first (``shortcut_lif``) and the projection's output neuron is off."""

    def __init__(self, dim: int, num_heads: int = 8, scale: float = 0.125, stream: str = "membrane",
                 neuron=lif):
        check_attention_args(dim, num_heads, stream)
        super().__init__(dim, num_heads, scale, proj_neuron=stream == "spike")
        self.stream = stream
        self.shortcut_lif = neuron() if stream == "membrane" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T,B,C,H,W]
        return super().forward(self.shortcut_lif(x).flatten(3)).reshape(x.shape)


class QKToken(TokenQKAttention):
    """QKFormer's Q-K token attention (``qkformer.TokenQKAttention``) on the plug-in interface."""

    def __init__(self, dim: int, num_heads: int = 8, stream: str = "membrane", neuron=lif):
        check_attention_args(dim, num_heads, stream)
        super().__init__(dim, num_heads, proj_neuron=stream == "spike")
        self.stream = stream
        self.shortcut_lif = neuron() if stream == "membrane" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.shortcut_lif(x))


class QKChannel(ChannelQKAttention):
    """QKFormer's Q-K channel attention (``qkformer.ChannelQKAttention``, [I]) on the plug-in interface."""

    def __init__(self, dim: int, num_heads: int = 8, attn_threshold: float = 0.5, stream: str = "membrane",
                 neuron=lif):
        check_attention_args(dim, num_heads, stream)
        super().__init__(dim, num_heads, proj_neuron=stream == "spike", attn_threshold=attn_threshold)
        self.stream = stream
        self.shortcut_lif = neuron() if stream == "membrane" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.shortcut_lif(x))


class MultiScaleTokenAttention(QKToken):
    """MSViT's multi-scale Q-K token attention (``Token_MS_Attention``, IJCAI 2025; spec others §3.3,
    released code): QKTA with a second, multi-scale branch P from a k=3 convolution along the
    (flattened, raster-order) token axis::

        Q, K = SN(BN(C1 X));  P = SN(BN(Conv1d_k3(X)))         binary [T,B,h,d,N]
        a    = SN_0.5( sum_channels Q + sum_channels P )        one binary token mask per head
        out  = BN(C1_proj (a * K))                              (fired on the spike stream)

    The paper's full fusion (MSSA) may hold more scales than the released code shows [?]; the
    branch kernel is the argument ``kernel_size``.
    """

    def __init__(self, dim: int, num_heads: int = 8, kernel_size: int = 3, stream: str = "membrane", neuron=lif):
        super().__init__(dim, num_heads, stream, neuron)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"MS branch kernel_size must be odd and >= 1, got {kernel_size}")
        self.p_conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, bias=False)
        self.p_bn = nn.BatchNorm1d(dim)
        self.p_lif = neuron()

    def mask(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        T, B, h = q.shape[:3]
        p = self.p_lif(seq(lambda z: self.p_bn(self.p_conv(z)), x)).reshape(q.shape)
        return self.attn_lif(q.sum(dim=3, keepdim=True) + p.sum(dim=3, keepdim=True))


class DSSAPlugin(DSSA):
    """SpikingResformer's Dual Spike Self-Attention (``resformer.DSSA``, per-head firing-rate
    scaling, patch size ``patch_size``) on the plug-in interface: its own input neuron is the
    membrane stream's (``activation_in``; an identity on the spike stream), the residual is left to
    the block, and on the spike stream the projection is fired (``proj_lif``). Neurons are the
    backbone's (``neuron``), not SpikingResformer's ATan LIF. N' is the pooled token count of the
    input (``fixed_tokens=False``)."""

    def __init__(self, dim: int, num_heads: int = 8, patch_size: int = 2, stream: str = "membrane",
                 neuron=lif):
        check_attention_args(dim, num_heads, stream)
        super().__init__(dim, num_heads, patch_size, neuron=neuron, residual=False)
        self.stream = stream
        if stream == "spike":
            self.activation_in = nn.Identity()
        self.proj_lif = neuron() if stream == "spike" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < self.patch_size or x.shape[-2] < self.patch_size:
            raise ValueError(f"DSSA patch_size {self.patch_size} is larger than the {x.shape[-2]}x{x.shape[-1]} "
                             "token map; pass attn_kwargs={'patch_size': ...}")
        y = super().forward(x)
        return self.proj_lif(y) if self.proj_lif is not None else y


ATTENTIONS: dict[str, type[nn.Module]] = {
    "ssa": SSA,
    "sdsa": SpikeDrivenSelfAttention,
    "qk_token": QKToken,
    "qk_channel": QKChannel,
    "dssa": DSSAPlugin,
    "a2os2a": A2OS2A,
    "statten": SpatioTemporalAttention,
    "stmixer": SpikingTokenMixer,
    "ms": MultiScaleTokenAttention,
    "ds2ta": AttenuatedSpatioTemporalAttention,
}


def build_attention(name: str, dim: int, num_heads: int, stream: str = "membrane",
                    num_tokens: int | None = None, **options) -> nn.Module:
    """The plug-in ``name`` for width ``dim``; ``num_tokens`` (H*W) goes to the attentions that need
    it (``stmixer``) unless ``options`` set it; ``options`` are the class's own arguments."""
    if name not in ATTENTIONS:
        raise ValueError(f"unknown attention {name!r}; expected one of {sorted(ATTENTIONS)}")
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
    cls = ATTENTIONS[name]
    if cls is SpikingTokenMixer:
        options.setdefault("num_tokens", num_tokens)
    try:
        return cls(dim, num_heads=num_heads, stream=stream, **options)
    except TypeError as e:
        raise TypeError(f"attention {name!r} ({cls.__name__}): {e}") from None
