"""MSViT's multi-scale Q-K token attention (IJCAI 2025)."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from ..layers import lif, seq
from .qk import QKToken

__all__ = ["MultiScaleTokenAttention"]


class MultiScaleTokenAttention(QKToken):
    """MSViT's multi-scale Q-K token attention (``Token_MS_Attention`` of the released code, IJCAI 2025): QKTA with a second, multi-scale branch P from a k=3 convolution along the
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
            raise ConfigError(f"MS branch kernel_size must be odd and >= 1, got {kernel_size}")
        self.p_conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, bias=False)
        self.p_bn = nn.BatchNorm1d(dim)
        self.p_lif = neuron()

    def mask(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        T, B, h = q.shape[:3]
        p = self.p_lif(seq(lambda z: self.p_bn(self.p_conv(z)), x)).reshape(q.shape)
        return self.attn_lif(q.sum(dim=3, keepdim=True) + p.sum(dim=3, keepdim=True))
