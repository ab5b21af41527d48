"""DS2TA, attenuated spatial-temporal attention with a denoiser."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from ..layers import lif, seq
from .common import QKVProjections, heads, unheads

__all__ = ["AttenuatedSpatioTemporalAttention"]


def _attenuate(y: torch.Tensor, alpha: float) -> torch.Tensor:
    """``z[t] = y[t] + alpha * z[t-1]`` over the leading T axis: sum_{tau <= t} alpha^(t-tau) y[tau]."""
    out, z = [], None
    for t in range(y.shape[0]):
        z = y[t] if z is None else y[t] + alpha * z
        out.append(z)
    return torch.stack(out)


class AttenuatedSpatioTemporalAttention(QKVProjections):
    """DS2TA-style attention: temporally attenuated spatiotemporal attention with a hashmap
    denoiser (Xu et al., arXiv 2409.15375).

    **Inferred [I], not verified: no official code; this formula is an inference from the
    abstract, and so is everything below. Its constants are arguments.** ::

        S = SN(U)
        Q[t] = SN(BN( sum_{tau <= t} alpha^(t-tau) W_Q S[tau] ))   likewise K, V (same weights for
                                                                  every earlier step, no new ones)
        A    = Q K^T                                  integer counts in 0..d per head [T,B,h,N,N]
        A'   = f(A)                                   f: learned lookup table over 0..d (denoiser),
                                                      initialised to the identity
        O    = SN_0.5( A' V * s )
        out  = BN( sum_{tau <= t} alpha^(t-tau) W_proj O[tau] + b )   (attenuated like Q, K, V)

    ``alpha`` (attenuation, default 0.5, fixed), ``denoiser`` (use f; False gives f = identity),
    ``scale`` s (default 0.125, Spikformer's). f is applied by indexing a table, whose gradient
    reaches the table; Q and K get a straight-through gradient (df/dA = 1). Addition-only: the
    attenuation multiplies by a constant (a shift for alpha = 2^-k), Q K^T is a product of spikes,
    A' V has a binary V. O(N^2 d) per head and step.
    """

    def __init__(self, dim: int, num_heads: int = 8, alpha: float = 0.5, denoiser: bool = True,
                 scale: float = 0.125, stream: str = "membrane", neuron=lif):
        super().__init__(dim, num_heads, stream, neuron)
        if not 0.0 <= alpha < 1.0:
            raise ConfigError(f"DS2TA alpha must be in [0, 1), got {alpha}")
        self.alpha, self.scale = alpha, scale
        self.q_lif, self.k_lif, self.v_lif = neuron(), neuron(), neuron()
        self.attn_lif = neuron(v_threshold=0.5)
        d = dim // num_heads
        self.denoise_table = nn.Parameter(torch.arange(d + 1, dtype=torch.float32)) if denoiser else None

    def _branch(self, n: str, s: torch.Tensor) -> torch.Tensor:
        conv, bn = getattr(self, f"{n}_conv"), getattr(self, f"{n}_bn")
        return getattr(self, f"{n}_lif")(seq(bn, _attenuate(seq(conv, s), self.alpha)))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        s = self.shortcut_lif(u)
        h = self.num_heads
        q, k, v = (heads(self._branch(n, s), h) for n in "qkv")         # [T,B,h,N,d] binary
        a = q @ k.transpose(-2, -1)                                       # [T,B,h,N,N] in 0..d
        if self.denoise_table is not None:
            idx = a.detach().round().long().clamp_(0, self.denoise_table.numel() - 1)
            a = self.denoise_table[idx] + (a - a.detach())
        a = self.attn_map(a)
        o = self.attn_lif(unheads((a @ v) * self.scale, u.shape))
        y = seq(self.proj_bn, _attenuate(seq(self.proj_conv, o), self.alpha))
        return self.proj_lif(y) if self.proj_lif is not None else y
