"""Spike-driven self-attention (SDSA) of the Spike-driven Transformer."""

from __future__ import annotations

import torch

from ..layers import lif
from .common import QKVProjections, erode, heads, unheads

__all__ = ["SpikeDrivenSelfAttention"]


class SpikeDrivenSelfAttention(QKVProjections):
    """Spike-Driven Self-Attention, SDSA (Yao et al., NeurIPS 2023), the official code's version 2::

        S = SN(U);  Q, K, V = SN(BN(C1 S))               (binary spikes)
        A = SN_0.5( sum_over_tokens(K * V) )             (binary channel mask per head, [T,B,h,1,d])
        out = BN(C1_proj(Q * A) + b)                      (increment to the membrane)

    Every product has a binary operand (K*V is an AND, Q*A a mask) and the token sum is an integer
    count, so the attention is addition-only. ``dvs_mode`` applies the official Erode to K, V, K*V
    and Q*A. The official module's unused ``talking_heads`` conv is not built.
    """

    def __init__(self, dim: int, num_heads: int = 8, dvs_mode: bool = False, stream: str = "membrane",
                 neuron=lif):
        super().__init__(dim, num_heads, stream, neuron)
        self.dvs_mode = dvs_mode
        self.q_lif, self.k_lif, self.v_lif = neuron(), neuron(), neuron()
        self.talking_heads_lif = neuron(v_threshold=0.5)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        s = self.shortcut_lif(u)
        q, k, v = self.fire("q", s), self.fire("k", s), self.fire("v", s)
        if self.dvs_mode:
            k, v = erode(k), erode(v)
        h = self.num_heads
        q, k, v = heads(q, h), heads(k, h), heads(v, h)
        kv = k * v
        if self.dvs_mode:
            kv = erode(kv)
        a = self.attn_map(self.talking_heads_lif(kv.sum(dim=-2, keepdim=True)))  # [T,B,h,1,d]
        y = q * a
        if self.dvs_mode:
            y = erode(y)
        return self.output(unheads(y, u.shape))
