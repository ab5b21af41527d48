"""Spiking self-attentions, one class each, with one interface.

Every attention here is built as ``Attention(dim, num_heads=..., stream=..., **options)`` and maps
the block's residual stream ``x[T, B, D, H, W]`` to the increment the block adds back to it, of the
same shape. ``stream`` says which kind of backbone it sits in:

``"membrane"`` (default; Spike-driven Transformer, membrane shortcut)
    ``x`` is the real-valued membrane ``U``; the attention fires it through its own input neuron
    (``shortcut_lif``) and returns the real increment ``BN(W_proj y)``.
``"spike"`` (Spikformer / QKFormer, SEW "ADD" residual of spikes)
    ``x`` is the integer-valued spike stream, used as is (``shortcut_lif`` is an identity); the
    increment is fired, ``SN(BN(W_proj y))`` (``proj_lif``), so the stream stays integer.

Each class has an ``attn_map`` identity module that the attention tensor passes through, so forward
hooks can capture it (for plots) without touching the arithmetic. The registry of plug-ins by name
(``ssa``, ``sdsa``, ``qk_token``, ... including the official Spikformer / QKFormer / SpikingResformer
attentions adapted to this interface) is :mod:`spikeformers.models.plugins`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import conv_bn_fire, lif, seq
from .neurons import ReLUNeuron, Ternary

__all__ = ["SpikeDrivenSelfAttention", "A2OS2A", "SpatioTemporalAttention", "SpikingTokenMixer",
           "AttenuatedSpatioTemporalAttention", "STREAMS", "erode"]

STREAMS = ("membrane", "spike")


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


def check_attention_args(dim: int, num_heads: int, stream: str) -> None:
    if dim % num_heads:
        raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")


class _QKVProjections(nn.Module):
    """Shared Q/K/V projections: bias-free 1x1 convs + BN on the input spikes, official names; the
    stream convention (module docstring): ``shortcut_lif`` in, ``proj_conv``/``proj_bn`` and, on
    the spike stream, ``proj_lif`` out."""

    def __init__(self, dim: int, num_heads: int = 8, stream: str = "membrane", neuron=lif, qkv: str = "qkv"):
        super().__init__()
        check_attention_args(dim, num_heads, stream)
        self.num_heads, self.stream = num_heads, stream
        self.shortcut_lif = neuron() if stream == "membrane" else nn.Identity()
        for n in qkv:
            setattr(self, f"{n}_conv", nn.Conv2d(dim, dim, 1, bias=False))
            setattr(self, f"{n}_bn", nn.BatchNorm2d(dim))
        self.attn_map = nn.Identity()
        self.proj_conv = nn.Conv2d(dim, dim, 1)
        self.proj_bn = nn.BatchNorm2d(dim)
        self.proj_lif = neuron() if stream == "spike" else None

    def project(self, n: str, s: torch.Tensor) -> torch.Tensor:
        conv, bn = getattr(self, f"{n}_conv"), getattr(self, f"{n}_bn")
        return seq(lambda z: bn(conv(z)), s)

    def fire(self, n: str, s: torch.Tensor) -> torch.Tensor:
        """``{n}_lif(project(n, s))``, BatchNorm and neuron fused where possible (layers.conv_bn_fire)."""
        return conv_bn_fire(getattr(self, f"{n}_conv"), getattr(self, f"{n}_bn"), getattr(self, f"{n}_lif"), s)

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """``BN(W_proj y + b)``, fired on the spike stream."""
        y = seq(lambda z: self.proj_bn(self.proj_conv(z)), y)
        return self.proj_lif(y) if self.proj_lif is not None else y


class SpikeDrivenSelfAttention(_QKVProjections):
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
        q, k, v = _heads(q, h), _heads(k, h), _heads(v, h)
        kv = k * v
        if self.dvs_mode:
            kv = erode(kv)
        a = self.attn_map(self.talking_heads_lif(kv.sum(dim=-2, keepdim=True)))  # [T,B,h,1,d]
        y = q * a
        if self.dvs_mode:
            y = erode(y)
        return self.output(_unheads(y, u.shape))


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
                 order: str = "q_kv", attn_scale: float = 1.0, stream: str = "membrane", neuron=lif):
        super().__init__(dim, num_heads, stream, neuron)
        if order not in ("q_kv", "qk_v"):
            raise ValueError(f"order must be 'q_kv' or 'qk_v', got {order!r}")
        if attn_scale <= 0:
            raise ValueError(f"attn_scale must be > 0, got {attn_scale}")
        self.order = order
        self.q_lif = neuron()
        self.k_relu = ReLUNeuron()
        self.v_ternary = Ternary(decay=ternary_decay, v_threshold=ternary_threshold)
        # SN_b(scale * O) == SN_b with threshold v_th / scale: the scale lives in the threshold.
        self.out_lif = neuron(v_threshold=1.0 / attn_scale) if out_neuron else None

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        s = self.shortcut_lif(u)
        h = self.num_heads
        q = _heads(self.fire("q", s), h)                          # [T,B,h,N,d] binary
        k = _heads(self.k_relu(self.project("k", s)), h)         # real >= 0
        v = _heads(self.v_ternary(self.project("v", s)), h)      # ternary
        if self.order == "q_kv":
            o = q @ self.attn_map(k.transpose(-2, -1) @ v)       # [T,B,h,N,d]
        else:
            o = self.attn_map(q @ k.transpose(-2, -1)) @ v
        o = _unheads(o, u.shape)
        if self.out_lif is not None:
            o = self.out_lif(o)
        return self.output(o)


def _attenuate(y: torch.Tensor, alpha: float) -> torch.Tensor:
    """``z[t] = y[t] + alpha * z[t-1]`` over the leading T axis: sum_{tau <= t} alpha^(t-tau) y[tau]."""
    out, z = [], None
    for t in range(y.shape[0]):
        z = y[t] if z is None else y[t] + alpha * z
        out.append(z)
    return torch.stack(out)


class SpatioTemporalAttention(_QKVProjections):
    """STAtten, spatial-temporal attention (Lee et al., CVPR 2025; spec others §3.4, official code)::

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
            raise ValueError(f"STAtten chunk must be >= 1, got {chunk}")
        self.chunk, self.scale = chunk, scale
        self.q_lif, self.k_lif, self.v_lif = neuron(), neuron(), neuron()
        self.attn_lif = neuron(v_threshold=0.5)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = u.shape
        c, h, N = self.chunk, self.num_heads, H * W
        if T % c:
            raise ValueError(f"STAtten chunk {c} must divide the number of time steps T={T}")
        s = self.shortcut_lif(u)
        d = C // h

        def chunked(x):  # [T,B,h,N,d] -> [T/c,B,h,c*N,d]
            return x.reshape(T // c, c, B, h, N, d).permute(0, 2, 3, 1, 4, 5).reshape(T // c, B, h, c * N, d)

        q, k, v = (chunked(_heads(self.fire(n, s), h)) for n in "qkv")
        kv = self.attn_map(k.transpose(-2, -1) @ v)                       # [T/c,B,h,d,d]
        o = (q @ kv) * (self.scale if self.scale is not None else 1.0 / H)
        o = o.reshape(T // c, B, h, c, N, d).permute(0, 3, 1, 2, 4, 5).reshape(T, B, h, N, d)
        return self.output(self.attn_lif(_unheads(o, u.shape)))


class SpikingTokenMixer(nn.Module):
    """STMixer's spiking token mixer (Deng et al., NeurIPS 2024; spec others §3.1, official code)::

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
            raise ValueError("SpikingTokenMixer needs num_tokens (H*W of the token map), got "
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
            raise ValueError(f"SpikingTokenMixer was built for {self.num_tokens} tokens, got a {H}x{W} "
                             "token map (the mixing matrix has a fixed size; token pruning cannot use it)")
        x = conv_bn_fire(self.in_conv, self.in_bn, self.in_lif, self.shortcut_lif(u))
        x = x.reshape(T, B, self.num_heads, C // self.num_heads, H * W)    # [T,B,h,d,N]
        y = x @ self.attn_map(self.mixer).transpose(-1, -2)   # [T,B,h,d,N]: y[..n] = sum_m W[n,m] x[..m]
        y = self.mix_lif(y.reshape(T, B, C, H, W))
        y = seq(lambda z: self.proj_bn(self.proj_conv(z)), y)
        return self.proj_lif(y) if self.proj_lif is not None else y


class AttenuatedSpatioTemporalAttention(_QKVProjections):
    """DS2TA-style attention: temporally attenuated spatiotemporal attention with a hashmap
    denoiser (Xu et al., arXiv 2409.15375; spec others §3.5).

    **Inferred [I], not verified: no official code; the spec's formula is an inference from the
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
            raise ValueError(f"DS2TA alpha must be in [0, 1), got {alpha}")
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
        q, k, v = (_heads(self._branch(n, s), h) for n in "qkv")         # [T,B,h,N,d] binary
        a = q @ k.transpose(-2, -1)                                       # [T,B,h,N,N] in 0..d
        if self.denoise_table is not None:
            idx = a.detach().round().long().clamp_(0, self.denoise_table.numel() - 1)
            a = self.denoise_table[idx] + (a - a.detach())
        a = self.attn_map(a)
        o = self.attn_lif(_unheads((a @ v) * self.scale, u.shape))
        y = seq(self.proj_bn, _attenuate(seq(self.proj_conv, o), self.alpha))
        return self.proj_lif(y) if self.proj_lif is not None else y
