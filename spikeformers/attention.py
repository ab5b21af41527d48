"""Spiking self-attentions, one class each, with one interface.

Every attention here takes the *membrane* stream ``U[T, B, D, H, W]`` of a block (real-valued), fires
it through its own input neuron (``shortcut_lif``) and returns the real-valued *increment* that the
block adds back to the membrane (the Spike-driven Transformer's membrane shortcut). Each class has
an ``attn_map`` identity module that the attention tensor passes through, so forward hooks can
capture it (for plots) without touching the arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import lif, seq
from .neurons import ReLUNeuron, Ternary

__all__ = ["SpikeDrivenSelfAttention", "A2OS2A", "erode"]


def erode(x: torch.Tensor) -> torch.Tensor:
    """SDT's dvs-mode ``Erode``: MaxPool3d(kernel (1,3,3), stride 1, padding (0,1,1)) on a 5-D
    tensor, i.e. dim 0 is the batch, dim 1 the channels, and the 3x3 window runs over the last two
    dims (whatever they mean in the caller's layout, reproduced as in the official code)."""
    return F.max_pool3d(x, kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """[T,B,C,H,W] -> [T,B,h,N,d]; channel c goes to head c // d (official ordering)."""
    T, B, C = x.shape[:3]
    return x.flatten(3).transpose(-1, -2).reshape(T, B, -1, h, C // h).permute(0, 1, 3, 2, 4)


def _unheads(x: torch.Tensor, shape) -> torch.Tensor:
    """[T,B,h,N,d] -> [T,B,C,H,W] (inverse of :func:`_heads`)."""
    T, B, C, H, W = shape
    return x.transpose(3, 4).reshape(T, B, C, H, W)


class _QKVProjections(nn.Module):
    """Shared Q/K/V projections: bias-free 1x1 convs + BN on the input spikes, official names."""

    def __init__(self, dim: int):
        super().__init__()
        for n in "qkv":
            setattr(self, f"{n}_conv", nn.Conv2d(dim, dim, 1, bias=False))
            setattr(self, f"{n}_bn", nn.BatchNorm2d(dim))

    def project(self, n: str, s: torch.Tensor) -> torch.Tensor:
        conv, bn = getattr(self, f"{n}_conv"), getattr(self, f"{n}_bn")
        return seq(lambda z: bn(conv(z)), s)


class SpikeDrivenSelfAttention(_QKVProjections):
    """Spike-Driven Self-Attention, SDSA (Yao et al., NeurIPS 2023), the official code's version 2::

        S = SN(U);  Q, K, V = SN(BN(C1 S))               (binary spikes)
        A = SN_0.5( sum_over_tokens(K * V) )             (binary channel mask per head, [T,B,h,1,d])
        out = BN(C1_proj(Q * A) + b)                      (increment to the membrane)

    Every product has a binary operand (K*V is an AND, Q*A a mask) and the token sum is an integer
    count, so the attention is addition-only. ``dvs_mode`` applies the official Erode to K, V, K*V
    and Q*A. The official module's unused ``talking_heads`` conv is not built.
    """

    def __init__(self, dim: int, num_heads: int = 8, dvs_mode: bool = False, neuron=lif):
        super().__init__(dim)
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dvs_mode = dvs_mode
        self.shortcut_lif = neuron()
        self.q_lif, self.k_lif, self.v_lif = neuron(), neuron(), neuron()
        self.talking_heads_lif = neuron(v_threshold=0.5)
        self.attn_map = nn.Identity()
        self.proj_conv = nn.Conv2d(dim, dim, 1)
        self.proj_bn = nn.BatchNorm2d(dim)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        s = self.shortcut_lif(u)
        q = self.q_lif(self.project("q", s))
        k = self.k_lif(self.project("k", s))
        v = self.v_lif(self.project("v", s))
        if self.dvs_mode:
            k, v = erode(k), erode(v)
        h = self.num_heads
        q, k, v = _heads(q, h), _heads(k, h), _heads(v, h)
        kv = k * v
        if self.dvs_mode:
            kv = erode(kv)
        a = self.attn_map(self.talking_heads_lif(kv.sum(dim=-2, keepdim=True)))  # [T,B,h,1,d]
        y = q * a
        if self.dvs_mode:
            y = erode(y)
        return seq(lambda z: self.proj_bn(self.proj_conv(z)), _unheads(y, u.shape))


class A2OS2A(_QKVProjections):
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

    Choices the sources disagree on (spec §1.2-1.5) are arguments, defaults from the spec:
    ``out_neuron`` (the SN before the projection, default on), ``ternary_decay`` / ``ternary_threshold``
    (0.25 / 0.5, the first author's Ternary-Spike constants), ``order`` ("q_kv", O(N d^2), or "qk_v",
    the paper's naive O(N^2 d); identical results in exact arithmetic).
    """

    def __init__(self, dim: int, num_heads: int = 8, out_neuron: bool = True,
                 ternary_decay: float = 0.25, ternary_threshold: float = 0.5,
                 order: str = "q_kv", attn_scale: float = 1.0, neuron=lif):
        super().__init__(dim)
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if order not in ("q_kv", "qk_v"):
            raise ValueError(f"order must be 'q_kv' or 'qk_v', got {order!r}")
        if attn_scale <= 0:
            raise ValueError(f"attn_scale must be > 0, got {attn_scale}")
        self.num_heads = num_heads
        self.order = order
        self.shortcut_lif = neuron()
        self.q_lif = neuron()
        self.k_relu = ReLUNeuron()
        self.v_ternary = Ternary(decay=ternary_decay, v_threshold=ternary_threshold)
        self.attn_map = nn.Identity()
        # SN_b(scale * O) == SN_b with threshold v_th / scale: the scale lives in the threshold.
        self.out_lif = neuron(v_threshold=1.0 / attn_scale) if out_neuron else None
        self.proj_conv = nn.Conv2d(dim, dim, 1)
        self.proj_bn = nn.BatchNorm2d(dim)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        s = self.shortcut_lif(u)
        h = self.num_heads
        q = _heads(self.q_lif(self.project("q", s)), h)          # [T,B,h,N,d] binary
        k = _heads(self.k_relu(self.project("k", s)), h)         # real >= 0
        v = _heads(self.v_ternary(self.project("v", s)), h)      # ternary
        if self.order == "q_kv":
            o = q @ self.attn_map(k.transpose(-2, -1) @ v)       # [T,B,h,N,d]
        else:
            o = self.attn_map(q @ k.transpose(-2, -1)) @ v
        o = _unheads(o, u.shape)
        if self.out_lif is not None:
            o = self.out_lif(o)
        return seq(lambda z: self.proj_bn(self.proj_conv(z)), o)
