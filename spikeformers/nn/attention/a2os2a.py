"""A²OS²A, the accurate addition-only spiking self-attention (Guo et al., CVPR 2025)."""

from __future__ import annotations

import torch

from ...errors import ConfigError
from ..layers import lif
from ..neurons import ReLUNeuron, Ternary
from .common import QKVProjections, heads, unheads

__all__ = ["A2OS2A", "PROJ_READINGS"]

#: The three readings of the attention's output (``proj=``); the first is the default.
PROJ_READINGS = ("sn_conv_bn", "none", "conv_bn")


class A2OS2A(QKVProjections):
    """Accurate Addition-Only Spiking Self-Attention, A²OS²A (Guo et al., CVPR 2025)::

        S = SN(U)
        Q = SN_b(BN(W_Q S))   in {0, 1}        binary LIF
        K = ReLU(BN(W_K S))   in R>=0          ReLU "neuron": full precision, non-negative
        V = SN_t(BN(W_V S))   in {-1, 0, 1}    ternary neuron
        O_h = Q_h (K_h^T V_h)  per head and time step, no softmax, no 1/sqrt(d) scale
        out = (one of three readings of the output, ``proj``)

    ``proj`` (the paper's text on the output is unread; re-implementations disagree):

    ``"sn_conv_bn"`` (default)
        ``BN(W_proj SN_b(concat_h O_h) + b)``: the output neuron, then the Spike-driven Transformer's
        projection (1x1 conv with bias, BN); the HP-STAtten module of the Univ. Lille reproduction
        (Layeser/snn). The projection's input is binary: addition-only.
    ``"none"``
        ``SN_b(concat_h O_h)``: the output spikes are the increment, no projection (the Lille
        reproduction of A²OS²A itself, Layeser/snn ``A2OS2A/src/models/modules/a2os2a.py``).
        Addition-only; no ``proj_conv`` / ``proj_bn`` parameters (D^2 + 3D fewer per block).
    ``"conv_bn"``
        ``BN(W_proj concat_h O_h)``: no output neuron, a bias-free 1x1 conv and BN
        (S0hamRay/SpikingTransformer ``attention.py``). The projection multiplies the real-valued
        O by real weights: **not** addition-only, and the energy audit flags it.

    On the spike stream (Spikformer backbone) the projected readings are fired (``proj_lif``) as
    every attention there; ``"none"`` returns the output spikes as they are.

    Why it is addition-only: in K^T V every product is k * v with v in {-1,0,1} (add, subtract or
    skip k); in Q (K^T V) every product has q in {0,1} (a masked sum); with ``order="qk_v"``,
    Q K^T has q binary (sums of selected keys, >= 0 like softmax weights) and (Q K^T) V has v ternary.
    The output neuron makes the projection's input binary again. No softmax and no scale: a global
    scale would fold into the following neuron's threshold (``attn_scale`` exposes exactly that
    choice as an output-threshold change, it never multiplies activations at inference; it needs
    the output neuron).

    Other choices the secondary sources disagree on are arguments too (``docs/a2os2a.md`` lists each
    source): ``ternary_decay`` / ``ternary_threshold`` (0.25 / 0.5, the constants of the first
    author's Ternary Spike code, yfguo91/Ternary-Spike), ``order`` ("q_kv", O(N d^2), or "qk_v",
    the paper's naive O(N^2 d); identical results in exact arithmetic).

    ``out_neuron`` is the older spelling, kept so that existing configurations load unchanged:
    ``True`` is ``proj="sn_conv_bn"``; ``False`` is ``proj="conv_bn"`` except that the conv keeps
    its bias (redundant before BatchNorm, but part of the state dicts saved with it).
    """

    def __init__(self, dim: int, num_heads: int = 8, proj: str = "sn_conv_bn", out_neuron: bool | None = None,
                 ternary_decay: float = 0.25, ternary_threshold: float = 0.5,
                 order: str = "q_kv", attn_scale: float = 1.0, stream: str = "membrane", neuron=lif):
        super().__init__(dim, num_heads, stream, neuron)
        if proj not in PROJ_READINGS:
            raise ConfigError(f"proj must be one of {PROJ_READINGS} (the readings of the attention's output), "
                              f"got {proj!r}")
        proj_bias = proj == "sn_conv_bn"
        if out_neuron is not None:
            if proj != "sn_conv_bn":
                raise ConfigError(f"give either proj or the older out_neuron, not both (got proj={proj!r}, "
                                  f"out_neuron={out_neuron!r})")
            proj, proj_bias = ("sn_conv_bn", True) if out_neuron else ("conv_bn", True)
        if order not in ("q_kv", "qk_v"):
            raise ConfigError(f"order must be 'q_kv' or 'qk_v', got {order!r}")
        if attn_scale <= 0:
            raise ConfigError(f"attn_scale must be > 0, got {attn_scale}")
        if attn_scale != 1.0 and proj == "conv_bn":
            raise ConfigError(f"attn_scale={attn_scale} acts through the output neuron's threshold; "
                              "proj='conv_bn' has no output neuron (its BatchNorm absorbs any scale): "
                              "use attn_scale=1.0 or another proj")
        self.order, self.proj = order, proj
        self.q_lif = neuron()
        self.k_relu = ReLUNeuron()
        self.v_ternary = Ternary(decay=ternary_decay, v_threshold=ternary_threshold)
        # SN_b(scale * O) == SN_b with threshold v_th / scale: the scale lives in the threshold.
        self.out_lif = neuron(v_threshold=1.0 / attn_scale) if proj != "conv_bn" else None
        if proj == "none":
            del self.proj_conv, self.proj_bn
            self.proj_lif = None
        elif not proj_bias:
            self.proj_conv.bias = None                          # a bias-free conv, same weight init

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
        if self.proj == "none":
            return o                                             # SN(O): spikes, added to the stream
        return self.output(o)

    def extra_repr(self) -> str:
        return f"proj={self.proj!r}, order={self.order!r}"
