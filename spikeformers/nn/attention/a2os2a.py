"""A²OS²A, the accurate addition-only spiking self-attention (Guo et al., CVPR 2025)."""

from __future__ import annotations

import torch

from ...errors import ConfigError
from ..layers import lif
from ..neurons import ReLUNeuron, Ternary
from .common import QKVProjections, heads, unheads

__all__ = ['A2OS2A']


class A2OS2A(QKVProjections):
    """Accurate Addition-Only Spiking Self-Attention, A²OS²A (Guo et al., CVPR 2025)::

        S = SN(U)
        Q = SN_b(BN(W_Q S))   in {0, 1}        binary LIF
        K = ReLU(BN(W_K S))   in R>=0          ReLU "neuron": full precision, non-negative
        V = SN_t(BN(W_V S))   in {-1, 0, 1}    ternary neuron
        O_h = Q_h (K_h^T V_h)  per head and time step, no softmax, no 1/sqrt(d) scale
        out = BN(W_proj SN_b(concat_h O_h))    (increment to the membrane)

    Why it is addition-only: in K^T V every product is k * v with v in {-1,0,1} (add, subtract or
    skip k); in Q (K^T V) every product has q in {0,1} (a masked sum); with ``order="qk_v"``,
    Q K^T has q binary (sums of selected keys, >= 0 like softmax weights) and (Q K^T) V has v ternary.
    The output neuron makes the projection's input binary again. No softmax and no scale: a global
    scale would fold into the following neuron's threshold (``attn_scale`` exposes exactly that
    choice as an output-threshold change, it never multiplies activations at inference).

    Choices the secondary sources disagree on are arguments (``docs/a2os2a.md`` lists each source):
    ``out_neuron`` (the SN before the projection, default on), ``ternary_decay`` / ``ternary_threshold``
    (0.25 / 0.5, the first author's Ternary-Spike constants), ``order`` ("q_kv", O(N d^2), or "qk_v",
    the paper's naive O(N^2 d); identical results in exact arithmetic).
    """

    def __init__(self, dim: int, num_heads: int = 8, out_neuron: bool = True,
                 ternary_decay: float = 0.25, ternary_threshold: float = 0.5,
                 order: str = "q_kv", attn_scale: float = 1.0, stream: str = "membrane", neuron=lif):
        super().__init__(dim, num_heads, stream, neuron)
        if order not in ("q_kv", "qk_v"):
            raise ConfigError(f"order must be 'q_kv' or 'qk_v', got {order!r}")
        if attn_scale <= 0:
            raise ConfigError(f"attn_scale must be > 0, got {attn_scale}")
        self.order = order
        self.q_lif = neuron()
        self.k_relu = ReLUNeuron()
        self.v_ternary = Ternary(decay=ternary_decay, v_threshold=ternary_threshold)
        # SN_b(scale * O) == SN_b with threshold v_th / scale: the scale lives in the threshold.
        self.out_lif = neuron(v_threshold=1.0 / attn_scale) if out_neuron else None

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        s = self.shortcut_lif(u)
        h = self.num_heads
        q = heads(self.fire("q", s), h)                          # [T,B,h,N,d] binary
        k = heads(self.k_relu(self.project("k", s)), h)         # real >= 0
        v = heads(self.v_ternary(self.project("v", s)), h)      # ternary
        if self.order == "q_kv":
            o = q @ self.attn_map(k.transpose(-2, -1) @ v)       # [T,B,h,N,d]
        else:
            o = self.attn_map(q @ k.transpose(-2, -1)) @ v
        o = unheads(o, u.shape)
        if self.out_lif is not None:
            o = self.out_lif(o)
        return self.output(o)
