"""STMixer's spiking token mixer: learned token mixing instead of Q K^T (Deng et al., NeurIPS 2024)."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from ..layers import conv_bn_fire, lif, seq
from .common import check_attention_args

__all__ = ["SpikingTokenMixer"]


class SpikingTokenMixer(nn.Module):
    """STMixer's spiking token mixer (Deng et al., NeurIPS 2024; official code)::

        S = SN(U);  X = SN(BN(C1_in S))                          binary [T,B,h,d,N]
        Y[:, h, c, :] = W_h X[:, h, c, :]                         W_h in R^{N x N}, learned per head
        out = BN(C1_proj SN(Y))                                  (increment to the membrane)

    A fixed learned token-mixing matrix replaces the data-dependent attention (only conv, FC and
    residual: operations an asynchronous chip supports). W_h has no bias and a Kaiming fan-out
    init; it needs the token count ``num_tokens`` = H*W at construction and refuses any other
    input size. ``attn_map`` sees the mixing matrices [h,N,N]. Addition-only: W_h multiplies
    spikes. The information-protection stem (IPSPS) is the backbone's ``stem="ipsps"``.
    """

    def __init__(self, dim: int, num_heads: int = 8, num_tokens: int | None = None,
                 stream: str = "membrane", neuron=lif):
        super().__init__()
        check_attention_args(dim, num_heads, stream)
        if not num_tokens or num_tokens < 1:
            raise ConfigError("SpikingTokenMixer needs num_tokens (H*W of the token map), got "
                             f"{num_tokens!r}; the backbones pass it from their stem's output size")
        self.num_heads, self.num_tokens, self.stream = num_heads, num_tokens, stream
        self.shortcut_lif = neuron() if stream == "membrane" else nn.Identity()
        self.in_conv = nn.Conv2d(dim, dim, 1, bias=False)
        self.in_bn = nn.BatchNorm2d(dim)
        self.in_lif = neuron()
        self.mixer = nn.Parameter(torch.randn(num_heads, num_tokens, num_tokens) * (2.0 / num_tokens) ** 0.5)
        self.attn_map = nn.Identity()
        self.mix_lif = neuron()
        self.proj_conv = nn.Conv2d(dim, dim, 1)
        self.proj_bn = nn.BatchNorm2d(dim)
        self.proj_lif = neuron() if stream == "spike" else None

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = u.shape
        if H * W != self.num_tokens:
            raise ConfigError(f"SpikingTokenMixer was built for {self.num_tokens} tokens, got a {H}x{W} "
                             "token map (the mixing matrix has a fixed size; token pruning cannot use it)")
        x = conv_bn_fire(self.in_conv, self.in_bn, self.in_lif, self.shortcut_lif(u))
        x = x.reshape(T, B, self.num_heads, C // self.num_heads, H * W)    # [T,B,h,d,N]
        y = x @ self.attn_map(self.mixer).transpose(-1, -2)   # [T,B,h,d,N]: y[..n] = sum_m W[n,m] x[..m]
        y = self.mix_lif(y.reshape(T, B, C, H, W))
        y = seq(lambda z: self.proj_bn(self.proj_conv(z)), y)
        return self.proj_lif(y) if self.proj_lif is not None else y
