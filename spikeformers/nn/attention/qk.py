"""QKFormer's Q-K attentions (Zhou et al., NeurIPS 2024), per head with d channels.

Q-K token attention (QKTA, :class:`TokenQKAttention`, official code)::

    Q, K = SN(BN(W_q X)), SN(BN(W_k X))          binary [T,B,h,d,N]
    A    = SN_0.5( sum over the d channels of Q )  one binary token mask per head [T,B,h,1,N]
    out  = SN(BN(W_p (A * K) + b_p))

Q-K channel attention (QKCA, :class:`ChannelQKAttention`) is the transposed variant of the paper.
:class:`QKToken` and :class:`QKChannel` put them on the plug-in interface of
:mod:`spikeformers.nn.attention`.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from ..layers import conv_bn_fire, lif, seq
from .common import check_attention_args

__all__ = ["TokenQKAttention", "ChannelQKAttention", "QKToken", "QKChannel"]


class TokenQKAttention(nn.Module):
    """Q-K token attention (QKTA; formula in the module docstring). x: [T, B, C, H, W]."""

    def __init__(self, dim: int, num_heads: int, proj_neuron: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"QKTA dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.proj_neuron = proj_neuron  # False: return BN(proj(.)) (membrane-shortcut plug-in use)
        self.attn_map = nn.Identity()   # hook point: the binary mask
        self.q_conv, self.q_bn, self.q_lif = nn.Conv1d(dim, dim, 1, bias=False), nn.BatchNorm1d(dim), lif()
        self.k_conv, self.k_bn, self.k_lif = nn.Conv1d(dim, dim, 1, bias=False), nn.BatchNorm1d(dim), lif()
        self.attn_lif = lif(v_threshold=0.5)
        self.proj_conv, self.proj_bn, self.proj_lif = nn.Conv1d(dim, dim, 1), nn.BatchNorm1d(dim), lif()

    def forward(self, x):
        T, B, C, H, W = x.shape
        x = x.flatten(3)                                                              # [T, B, C, N]
        q = conv_bn_fire(self.q_conv, self.q_bn, self.q_lif, x).reshape(T, B, self.num_heads, -1, H * W)
        k = conv_bn_fire(self.k_conv, self.k_bn, self.k_lif, x).reshape(T, B, self.num_heads, -1, H * W)
        attn = self.attn_map(self.mask(q, x))                                         # [T, B, h, 1, N]
        y = (attn * k).flatten(2, 3)                                                  # [T, B, C, N]
        if self.proj_neuron:
            return conv_bn_fire(self.proj_conv, self.proj_bn, self.proj_lif, y).reshape(T, B, C, H, W)
        return seq(lambda z: self.proj_bn(self.proj_conv(z)), y).reshape(T, B, C, H, W)

    def mask(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The binary mask from Q [T,B,h,d,N] (x [T,B,C,N] is the block input, for subclasses):
        one token mask per head, SN_0.5(sum over the head's channels of Q)."""
        return self.attn_lif(torch.sum(q, dim=3, keepdim=True))


class ChannelQKAttention(TokenQKAttention):
    """Q-K channel attention (QKCA), QKFormer's transposed variant, which is *not* in the released
    code: one binary channel mask per head from the token sum of Q::

        A = SN_th( sum over the N tokens of Q )     [T,B,h,d,1]
        out = SN(BN(W_p (A * K) + b_p))

    [I] The paper gives no threshold; ``attn_threshold`` (default 0.5, QKTA's) is an argument.
    With binary Q a token sum reaches 0.5 as soon as one token fires, so most channels pass;
    a larger threshold makes the mask selective."""

    def __init__(self, dim: int, num_heads: int, proj_neuron: bool = True, attn_threshold: float = 0.5):
        super().__init__(dim, num_heads, proj_neuron)
        self.attn_lif = lif(v_threshold=attn_threshold)

    def mask(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.attn_lif(torch.sum(q, dim=4, keepdim=True))


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
