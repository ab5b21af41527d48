"""Fused multi-step neurons for CUDA tensors, written in Triton (the GPU twin of ``csrc/neurons.c``).

One program handles a block of the N neurons of a ``[T, N]`` tensor (time step t at offset t * N)
and walks through time with the state in registers: the forward reads x once and writes the spikes
(and, for training, the pre-spike potential H[t] or the ternary potential u[t]); the backward walks
back through time once. This replaces the 3 to 6 elementwise kernels per time step of the plain
loop.

Exactness: the float32 forward performs the IEEE operations of the plain PyTorch loop on CUDA, in
the same order, with fused multiply-add contraction switched off (``enable_fp_fusion=False``), so
the spikes and potentials are bit-identical to it. One detail of PyTorch's CUDA division by a Python
number is reproduced: it multiplies by the float32 reciprocal (``x * (1/tau)``), so the kernels do
the same. bfloat16 / float16 tensors are read and written in their dtype with the state in float32.

A saved bfloat16 potential stays on the side of the threshold the float32 forward decided, as in the
C kernels (``csrc/common.h``): rounding can carry 0.998 to 1.0, which would give the backward a reset
mask that disagrees with the spikes, so the rounding is done on the bits (round to nearest even, as
``Tensor.to(torch.bfloat16)``) and moved one bfloat16 step back where it crossed. Doing it on the
bits also makes Triton's CPU interpreter (``TRITON_INTERPRET=1``, whose own float-to-bfloat16 cast
truncates) store the same values as a GPU, so ``tests/test_triton_interpreter.py`` checks the kernels
without a GPU. float16 potentials are stored by a plain cast (our trainer's GPU autocast is bf16).

Imported lazily by :mod:`spikeformers.kernels` for CUDA tensors only; when Triton is missing or a
launch fails, the plain loop runs instead.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _bf16_bits(h):
    """float32 -> bfloat16 bit pattern (uint32 holding 16 bits), round to nearest even; NaN stays NaN."""
    b = h.to(tl.uint32, bitcast=True)
    rounded = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return tl.where((b & 0x7FFFFFFF) > 0x7F800000, (b >> 16) | 0x40, rounded)


@triton.jit
def _store_side(ptr, h, vth, fired, mask, MAGNITUDE: tl.constexpr):
    """Store the potential ``h`` in ``ptr``'s dtype; for bfloat16 on the side of ``vth`` that ``fired``
    says (``MAGNITUDE``: the ternary neuron's |u| against vth; rounding keeps the sign)."""
    if ptr.dtype.element_ty == tl.bfloat16:
        b = _bf16_bits(h)
        m = b & 0x7FFF if MAGNITUDE else b
        wrong = ((m << 16).to(tl.float32, bitcast=True) >= vth) != fired
        b = tl.where(wrong, tl.where(fired, b + 1, b - 1), b)
        tl.store(ptr, b.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, h.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lif_fwd(x_ptr, s_ptr, h_ptr, T, N, inv_tau, c, r, vth, v0,
             CHARGE: tl.constexpr, RESET: tl.constexpr, KEEP_H: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < N
    v = tl.zeros([BLOCK], dtype=tl.float32) + v0
    for t in range(T):
        off = t * N + idx
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
        if CHARGE <= 1:      # decay_input: v + (x - (v - r)) / tau; v - 0.0 is v bit for bit, so
            h = v + (x - (v - r)) * inv_tau  # this is also the loop's v + (x - v) / tau at r = 0
        elif CHARGE == 2:    # no decay_input, v_reset 0: v * (1 - 1/tau) + x
            h = v * c + x
        elif CHARGE == 3:    # no decay_input, v_reset r: v - (v - r) / tau + x
            h = v - (v - r) * inv_tau + x
        else:                # IF: v + x
            h = v + x
        fired = h >= vth
        tl.store(s_ptr + off, tl.where(fired, 1.0, 0.0).to(s_ptr.dtype.element_ty), mask=mask)
        if KEEP_H:
            _store_side(h_ptr + off, h, vth, fired, mask, MAGNITUDE=False)
        if RESET == 0:       # soft: h - s * vth
            v = tl.where(fired, h - vth, h)
        elif RESET == 1:     # hard to 0: h * (1 - s)
            v = tl.where(fired, h * 0.0, h)
        else:                # hard to r: (1 - s) * h + s * r
            v = tl.where(fired, 0.0 * h + r, h)


@triton.jit
def _surrogate(z, alpha, SURROGATE: tl.constexpr):
    if SURROGATE == 0:       # Sigmoid
        sig = 1.0 / (1.0 + tl.exp(-alpha * z))
        g = alpha * sig * (1.0 - sig)
    elif SURROGATE == 1:     # ATan
        q = 1.5707963267948966 * alpha * z
        g = (alpha / 2.0) / (1.0 + q * q)
    elif SURROGATE == 2:     # straight-through clamp
        g = tl.where(tl.abs(z) <= alpha, 1.0, 0.0)
    else:                    # triangle
        g = tl.maximum(1.0 - tl.abs(z) / alpha, 0.0) / alpha
    return g


@triton.jit
def _lif_bwd(gs_ptr, h_ptr, gx_ptr, T, N, a, b, vth, r, alpha,
             SOFT: tl.constexpr, DETACH: tl.constexpr, SURROGATE: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < N
    gv = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(T):
        t = T - 1 - i
        off = t * N + idx
        h = tl.load(h_ptr + off, mask=mask, other=0.0).to(tl.float32)
        z = h - vth
        sg = _surrogate(z, alpha, SURROGATE)
        if SOFT:
            dvdh = tl.zeros([BLOCK], dtype=tl.float32) + 1.0
            if not DETACH:
                dvdh = dvdh - vth * sg
        else:
            dvdh = tl.where(z < 0.0, 1.0, 0.0)
            if not DETACH:
                dvdh = dvdh + (r - h) * sg
        gh = tl.load(gs_ptr + off, mask=mask, other=0.0).to(tl.float32) * sg + gv * dvdh
        tl.store(gx_ptr + off, (gh * b).to(gx_ptr.dtype.element_ty), mask=mask)
        gv = gh * a


@triton.jit
def _ternary_fwd(x_ptr, o_ptr, u_ptr, T, N, decay, vth, KEEP_U: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < N
    u = tl.zeros([BLOCK], dtype=tl.float32)
    o = tl.zeros([BLOCK], dtype=tl.float32)
    for t in range(T):
        off = t * N + idx
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
        u = decay * u * (1.0 - tl.abs(o)) + x
        sgn = tl.where(u < 0.0, -1.0, 1.0)
        fired = sgn * u - vth >= 0.0
        o = tl.where(fired, sgn, 0.0)
        tl.store(o_ptr + off, o.to(o_ptr.dtype.element_ty), mask=mask)
        if KEEP_U:
            _store_side(u_ptr + off, u, vth, fired, mask, MAGNITUDE=True)


@triton.jit
def _ternary_bwd(go_ptr, u_ptr, gx_ptr, T, N, decay, vth, alpha,
                 DETACH: tl.constexpr, SURROGATE: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < N
    gu = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(T):
        t = T - 1 - i
        off = t * N + idx
        u = tl.load(u_ptr + off, mask=mask, other=0.0).to(tl.float32)
        sgn = tl.where(u < 0.0, -1.0, 1.0)
        mag = sgn * u - vth
        out = tl.where(mag >= 0.0, sgn, 0.0)
        # u[t+1] = decay u[t] (1 - |o[t]|) + x[t+1]
        g_o = tl.load(go_ptr + off, mask=mask, other=0.0).to(tl.float32)
        if not DETACH:
            g_o = g_o - gu * decay * u * out
        g = gu * decay * (1.0 - tl.abs(out)) + g_o * _surrogate(mag, alpha, SURROGATE)
        tl.store(gx_ptr + off, g.to(gx_ptr.dtype.element_ty), mask=mask)
        gu = g


def _f32(v: float) -> float:
    return float(np.float32(v))


def _grid(N: int):
    return (triton.cdiv(N, _BLOCK),)


def lif_forward(ck: int, rk: int, tau: float, c: float, r: float, vth: float, v0: float,
                x: torch.Tensor, keep_h: bool):
    """Spikes (and H if ``keep_h``) of a fixed-coefficient LIF/IF; kinds as in ``kernels.lif_kinds``
    (charge 0 decay, 1 decay with v_reset, 2 no decay, 3 no decay with v_reset, 4 IF; reset 0 soft,
    1 zero, 2 value)."""
    T = x.shape[0]
    N = x.numel() // T
    s = torch.empty_like(x)
    hs = torch.empty_like(x) if keep_h else s
    inv_tau = _f32(1.0 / _f32(tau))
    _lif_fwd[_grid(N)](x, s, hs, T, N, inv_tau, _f32(c), _f32(r), _f32(vth), _f32(v0),
                       CHARGE=ck, RESET=rk, KEEP_H=keep_h, BLOCK=_BLOCK, enable_fp_fusion=False)
    return s, (hs if keep_h else None)


def lif_backward(rk: int, detach: bool, a: float, b: float, vth: float, r: float, sk: int, alpha: float,
                 grad_s: torch.Tensor, hs: torch.Tensor) -> torch.Tensor:
    T = hs.shape[0]
    N = hs.numel() // T
    gx = torch.empty_like(hs)
    _lif_bwd[_grid(N)](grad_s, hs, gx, T, N, float(a), float(b), float(vth), float(r), float(alpha),
                       SOFT=rk == 0, DETACH=bool(detach), SURROGATE=sk, BLOCK=_BLOCK)
    return gx


def ternary_forward(decay: float, vth: float, x: torch.Tensor, keep_u: bool):
    T = x.shape[0]
    N = x.numel() // T
    o = torch.empty_like(x)
    us = torch.empty_like(x) if keep_u else o
    _ternary_fwd[_grid(N)](x, o, us, T, N, _f32(decay), _f32(vth), KEEP_U=keep_u, BLOCK=_BLOCK,
                           enable_fp_fusion=False)
    return o, (us if keep_u else None)


def ternary_backward(detach: bool, decay: float, vth: float, sk: int, alpha: float,
                     grad_o: torch.Tensor, us: torch.Tensor) -> torch.Tensor:
    T = us.shape[0]
    N = us.numel() // T
    gx = torch.empty_like(us)
    _ternary_bwd[_grid(N)](grad_o, us, gx, T, N, float(decay), float(vth), float(alpha),
                           DETACH=bool(detach), SURROGATE=sk, BLOCK=_BLOCK)
    return gx
