"""STAtten, spatial-temporal attention over chunks of time steps (Lee et al., CVPR 2025)."""

from __future__ import annotations

import torch

from ...errors import ConfigError
from ..layers import lif
from .common import QKVProjections, heads, unheads

__all__ = ["SpatioTemporalAttention"]


class SpatioTemporalAttention(QKVProjections):
    """STAtten, spatial-temporal attention (Lee et al., CVPR 2025; official code)::

        S = SN(U);  Q, K, V = SN(BN(C1 S))                      binary
        split T into T/c chunks of c consecutive steps; in each chunk stack the c*N tokens:
        O_chunk = Q_chunk (K_chunk^T V_chunk) * s                per head, K^T V is d x d
        out = BN(C1_proj SN_0.5(O))                              (increment to the membrane)

    ``chunk`` c (2 for T=4 in the paper, 4 for T=16 on DVS; T must be a multiple of it; ``chunk=1``
    is per-step linear attention). ``scale`` s defaults to 1/H with H the token-map height (the
    static-image constant); the DVS constant is 1/(H^2 c). The DVS erosion terms are not built.
    Addition-only: K^T V is a sum of binary products (an integer count), Q (K^T V) has a binary Q,
    and s is a constant that folds into the 0.5 threshold.
    """

    def __init__(self, dim: int, num_heads: int = 8, chunk: int = 2, scale: float | None = None,
                 stream: str = "membrane", neuron=lif):
        super().__init__(dim, num_heads, stream, neuron)
        if chunk < 1:
            raise ConfigError(f"STAtten chunk must be >= 1, got {chunk}")
        self.chunk, self.scale = chunk, scale
        self.q_lif, self.k_lif, self.v_lif = neuron(), neuron(), neuron()
        self.attn_lif = neuron(v_threshold=0.5)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = u.shape
        c, h, N = self.chunk, self.num_heads, H * W
        if T % c:
            raise ConfigError(f"STAtten chunk {c} must divide the number of time steps T={T}")
        s = self.shortcut_lif(u)
        d = C // h

        def chunked(x):  # [T,B,h,N,d] -> [T/c,B,h,c*N,d]
            return x.reshape(T // c, c, B, h, N, d).permute(0, 2, 3, 1, 4, 5).reshape(T // c, B, h, c * N, d)

        q, k, v = (chunked(heads(self.fire(n, s), h)) for n in "qkv")
        kv = self.attn_map(k.transpose(-2, -1) @ v)                       # [T/c,B,h,d,d]
        o = (q @ kv) * (self.scale if self.scale is not None else 1.0 / H)
        o = o.reshape(T // c, B, h, c, N, d).permute(0, 3, 1, 2, 4, 5).reshape(T, B, h, N, d)
        return self.output(self.attn_lif(unheads(o, u.shape)))
