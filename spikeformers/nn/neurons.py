"""Spiking neurons and surrogate gradients.

Every neuron here is *multi-step and stateless*: it takes a whole sequence ``x[T, ...]`` (time
first) and returns the spikes ``s[T, ...]`` in ``x``'s dtype. The membrane potential lives only
inside the call, so there is no ``reset_net`` to forget between batches.

The LIF family follows SpikingJelly's equations exactly (the ones every official model uses)::

    charge  H[t] = V[t-1] + (X[t] - (V[t-1] - v_reset)) / tau      (decay_input=True)
            H[t] = V[t-1] - (V[t-1] - v_reset) / tau + X[t]         (decay_input=False)
    fire    S[t] = Heaviside(H[t] - v_threshold)                   (fires when H >= v_threshold)
    reset   V[t] = H[t] * (1 - S[t]) + v_reset * S[t]              (hard reset, v_reset is a float)
            V[t] = H[t] - S[t] * v_threshold                       (soft reset, v_reset=None)

with ``V[-1] = v_reset`` (0 for a soft reset). ``detach_reset`` stops the gradient through the
``S[t]`` used in the reset. In the backward pass the Heaviside is replaced by the derivative of a
*surrogate* (``Sigmoid``, ``ATan``, ``StraightThrough``, ``Triangle``), evaluated at
``H - v_threshold``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import kernels
from ..errors import ConfigError, InputError
from .surrogates import (
    KERNEL_SURROGATES,
    ATan,
    Sigmoid,
    StraightThrough,
    Surrogate,
    Triangle,
    spike,
    surrogate_from_config,
)

__all__ = [
    "Surrogate", "Sigmoid", "ATan", "StraightThrough", "Triangle", "spike",
    "LIF", "IF", "PLIF", "Ternary", "ReLUNeuron", "surrogate_from_config",
]


def _check_sequence(x: torch.Tensor, who: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{who} expects a tensor x[T, ...], got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ConfigError(f"{who} expects x[T, ...] with T >= 1 time steps first, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{who} expects a floating-point input, got {x.dtype}")


class _BaseLIF(nn.Module):
    """Shared charge / fire / reset loop of the LIF family (see the module docstring)."""

    def __init__(self, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                 detach_reset: bool = True, surrogate: Surrogate | str | dict = "sigmoid",
                 smooth: bool = False):
        super().__init__()
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.detach_reset = bool(detach_reset)
        self.surrogate = surrogate_from_config(surrogate)
        # smooth=True replaces the Heaviside by the surrogate's primitive in the forward pass: the
        # neuron becomes an ordinary differentiable function (for gradient checks), never for use.
        self.smooth = bool(smooth)

    def charge(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def fire(self, h: torch.Tensor) -> torch.Tensor:
        if self.smooth:
            return self.surrogate.primitive(h - self.v_threshold)
        return spike(h - self.v_threshold, self.surrogate)

    def charge_coeffs(self) -> tuple[float, float] | None:
        """Constant (dH/dV, dH/dX) of a charge that is linear with fixed coefficients, enabling the
        fused single-pass backward; ``None`` (learnable leak) uses the autograd loop."""
        return None

    def reset(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """V[t] from H[t] and the (possibly detached) spikes S[t], in SpikingJelly's float order."""
        if self.v_reset is None:
            return h - s * self.v_threshold
        if self.v_reset == 0.0:
            return h * (1.0 - s)
        return (1.0 - s) * h + s * self.v_reset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_sequence(x, type(self).__name__)
        if not self.smooth and self.charge_coeffs() is not None:
            if torch.is_grad_enabled() and x.requires_grad:
                if not torch.compiler.is_compiling():
                    return _FusedLIF.apply(x, self)
            else:
                with torch.no_grad():
                    if kernels.supports(x):
                        return kernels.lif_forward(self, x, keep_h=False)[0]
                    return _lif_loop(self, x)[0]
        v0 = 0.0 if self.v_reset is None else self.v_reset
        v = torch.full_like(x[0], v0)
        out = []
        for t in range(x.shape[0]):
            h = self.charge(v, x[t])
            s = self.fire(h)
            v = self.reset(h, s.detach() if self.detach_reset else s)
            out.append(s)
        return torch.stack(out)

    def extra_repr(self) -> str:
        return (f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, "
                f"detach_reset={self.detach_reset}, surrogate={self.surrogate}")


def _lif_loop(neuron: "_BaseLIF", x: torch.Tensor, keep_h: bool = False):
    """Forward of a fixed-coefficient LIF/IF without autograd: the spikes and (optionally) the
    pre-spike potentials H[t] that the fused backward needs. Same float operations, in the same
    order, as the autograd loop, so the spikes are bit-identical."""
    v = torch.full_like(x[0], 0.0 if neuron.v_reset is None else neuron.v_reset)
    out = torch.empty_like(x)
    hs = torch.empty_like(x) if keep_h else None
    for t in range(x.shape[0]):
        h = neuron.charge(v, x[t])
        s = (h >= neuron.v_threshold).to(x.dtype)
        out[t] = s
        if keep_h:
            hs[t] = h
        v = neuron.reset(h, s)
    return out, hs


class _FusedLIF(torch.autograd.Function):
    """Multi-step LIF/IF with a hand-written backward through time: one forward pass saving only
    H[t], one reverse pass. Runs in the compiled kernel (:mod:`spikeformers.kernels`) when it is
    available for ``x``, else as the PyTorch loops below (the same arithmetic). dH/dV = a and dH/dX = b are the neuron's constant charge coefficients;
    g = surrogate'(H - v_th)::

        dV/dH = 1 - S (+ (v_reset - H) g unless detach_reset)     hard reset
        dV/dH = 1     (- v_th g          unless detach_reset)     soft reset
        gH[t] = gS[t] g[t] + gV[t] dV/dH[t];  gX[t] = b gH[t];  gV[t-1] = a gH[t]
    """

    @staticmethod
    def forward(ctx, x, neuron):
        ctx.kernel = type(neuron.surrogate) in KERNEL_SURROGATES and kernels.supports(x)
        with torch.no_grad():
            out, hs = kernels.lif_forward(neuron, x, keep_h=True) if ctx.kernel else _lif_loop(neuron, x, keep_h=True)
        ctx.save_for_backward(hs)
        ctx.neuron = neuron
        return out

    @staticmethod
    def backward(ctx, grad_s):
        (hs,) = ctx.saved_tensors
        n = ctx.neuron
        a, b = n.charge_coeffs()
        if ctx.kernel:
            return kernels.lif_backward(n, grad_s, hs, a, b), None
        grad_x = torch.empty_like(hs)
        grad_v = None
        for t in range(hs.shape[0] - 1, -1, -1):
            z = hs[t] - n.v_threshold
            sg = n.surrogate.derivative(z)
            gh = grad_s[t] * sg
            if grad_v is not None:
                if n.v_reset is None:
                    dvdh = 1.0 if n.detach_reset else 1.0 - n.v_threshold * sg
                else:
                    dvdh = (z < 0).to(hs.dtype)
                    if not n.detach_reset:
                        dvdh = dvdh + (n.v_reset - hs[t]) * sg
                gh = gh + grad_v * dvdh
            grad_x[t] = gh * b
            grad_v = gh * a
        return grad_x, None


class LIF(_BaseLIF):
    """Leaky integrate-and-fire, SpikingJelly ``LIFNode`` semantics (defaults: the official
    Spikformer / SDT / QKFormer neuron: tau 2, decay_input, threshold 1, hard reset to 0,
    detached reset, Sigmoid(alpha=4) surrogate)."""

    def __init__(self, tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: float | None = 0.0, detach_reset: bool = True,
                 surrogate: Surrogate | str | dict = "sigmoid", smooth: bool = False):
        super().__init__(v_threshold, v_reset, detach_reset, surrogate, smooth)
        if tau <= 1.0:
            raise ConfigError(f"LIF tau must be > 1 (a leak factor 1/tau in (0, 1)), got {tau}")
        self.tau = float(tau)
        self.decay_input = bool(decay_input)

    def charge(self, v, x):
        # Written in SpikingJelly's exact floating-point order (bit-identical spikes).
        if self.decay_input:
            if self.v_reset is None or self.v_reset == 0.0:
                return v + (x - v) / self.tau
            return v + (x - (v - self.v_reset)) / self.tau
        if self.v_reset is None or self.v_reset == 0.0:
            return v * (1.0 - 1.0 / self.tau) + x
        return v - (v - self.v_reset) / self.tau + x

    def charge_coeffs(self):
        return (1.0 - 1.0 / self.tau, 1.0 / self.tau if self.decay_input else 1.0)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, decay_input={self.decay_input}, " + super().extra_repr()


class IF(_BaseLIF):
    """Integrate-and-fire: H[t] = V[t-1] + X[t], no leak."""

    def charge(self, v, x):
        return v + x

    def charge_coeffs(self):
        return (1.0, 1.0)


class PLIF(_BaseLIF):
    """Parametric LIF (Fang et al. 2021): a learnable ``w`` per layer, tau = 1 / sigmoid(w).
    ``init_tau`` sets w0 = -log(init_tau - 1) (tau0 = 2 gives w0 = 0). The state-dict entry is
    ``w`` (a scalar), as in SpikingJelly."""

    def __init__(self, init_tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: float | None = 0.0, detach_reset: bool = True,
                 surrogate: Surrogate | str | dict = "sigmoid", smooth: bool = False):
        super().__init__(v_threshold, v_reset, detach_reset, surrogate, smooth)
        if init_tau <= 1.0:
            raise ConfigError(f"PLIF init_tau must be > 1, got {init_tau}")
        self.decay_input = bool(decay_input)
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))

    @property
    def tau(self) -> float:
        return float(1.0 / torch.sigmoid(self.w.detach()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_sequence(x, "PLIF")
        if x.dim() == 1:
            # x[t] would be 0-dim, and a 0-dim float32 w.sigmoid() would then promote the state
            # (and the output) of a bfloat16 / float16 input to float32: run it as x[T, 1].
            return super().forward(x.unsqueeze(1)).squeeze(1)
        return super().forward(x)

    def charge(self, v, x):
        k = self.w.sigmoid()  # 1 / tau
        if self.decay_input:
            if self.v_reset is None or self.v_reset == 0.0:
                return v + (x - v) * k
            return v + (x - (v - self.v_reset)) * k
        if self.v_reset is None or self.v_reset == 0.0:
            return v * (1.0 - k) + x
        return v - (v - self.v_reset) * k + x


class Ternary(nn.Module):
    """Ternary spiking neuron (Guo et al., Ternary Spike, AAAI 2024; used for V in A²OS²A)::

        u[t] = decay * u[t-1] * (1 - |o[t-1]|) + x[t]
        o[t] = +1 if u[t] >= v_threshold, -1 if u[t] <= -v_threshold, else 0

    i.e. a hard reset to 0 after either spike, and a leak ``decay`` otherwise. This form is
    confirmed for A²OS²A: its Eq. 27 (Guo et al., CVPR 2025), as the Lille re-implementation
    (Layeser/snn ``HPSTAtten/src/models/modules/ternary_lif.py``) writes it, is the Spike-driven
    Transformer's LIF for a ternary spike, H = V_reset * |S| + beta * U * (1 - |S|) with
    |S| = Hea(|U| - V_th): with V_reset = 0 and beta = ``decay`` it is the recursion above.

    The constants are not confirmed for A²OS²A (the paper's values of beta and V_th are unread);
    both defaults come from the first author's Ternary Spike code (yfguo91/Ternary-Spike,
    ``models/spike_layer.py``): ``decay=0.25`` is the ``decay`` its ``LIFAct`` passes to
    ``mem_update``; ``v_threshold=0.5`` is its firing rule, |u / V_th| >= 0.5 with V_th = 1.0.
    That code has a spike amplitude ``fire_ratio`` fixed to 1 (the paper's trainable alpha); none here.

    Backward: do/du = g(|u| - v_threshold) with ``g`` the surrogate's derivative; the default
    StraightThrough(0.5) with threshold 0.5 gives gradient 1 for |u| <= 1 (that code's
    ``clamp(u / V_th, -1, 1)`` straight-through backward).
    """

    def __init__(self, decay: float = 0.25, v_threshold: float = 0.5, detach_reset: bool = False,
                 surrogate: Surrogate | str | dict | None = None, smooth: bool = False):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"Ternary decay must be in [0, 1], got {decay}")
        if v_threshold <= 0:
            raise ConfigError(f"Ternary v_threshold must be > 0, got {v_threshold}")
        self.decay = float(decay)
        self.v_threshold = float(v_threshold)
        self.detach_reset = bool(detach_reset)
        self.surrogate = surrogate_from_config(surrogate if surrogate is not None
                                               else StraightThrough(0.5))
        self.smooth = bool(smooth)

    def fire(self, u: torch.Tensor) -> torch.Tensor:
        # o = sgn * H(sgn * u - th) with sgn = +1 for u >= 0, -1 otherwise (a constant): the same
        # forward as sign(u) * H(|u| - th), but do/du = g(|u| - th) at u = 0 too (torch.sign and
        # abs have a zero gradient at 0, which dropped the gradient of an exactly-zero potential).
        sgn = torch.where(u < 0, -1.0, 1.0).to(u.dtype)
        mag = sgn * u - self.v_threshold
        if self.smooth:
            return sgn * self.surrogate.primitive(mag)
        return sgn * spike(mag, self.surrogate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_sequence(x, "Ternary")
        if not self.smooth and type(self.surrogate) in KERNEL_SURROGATES and kernels.supports(x):
            if torch.is_grad_enabled() and x.requires_grad:
                return _FusedTernary.apply(x, self)
            with torch.no_grad():
                return kernels.ternary_forward(self, x, keep_u=False)[0]
        u = torch.zeros_like(x[0])
        o = torch.zeros_like(x[0])
        out = []
        for t in range(x.shape[0]):
            keep = 1.0 - (o.detach() if self.detach_reset else o).abs()
            u = self.decay * u * keep + x[t]
            o = self.fire(u)
            out.append(o)
        return torch.stack(out)

    def extra_repr(self) -> str:
        return (f"decay={self.decay}, v_threshold={self.v_threshold}, "
                f"detach_reset={self.detach_reset}, surrogate={self.surrogate}")


class _FusedTernary(torch.autograd.Function):
    """The ternary neuron in the compiled kernel: forward saves u[t], backward runs through time
    (see ``csrc/neurons.c``); same spikes as :meth:`Ternary.forward`'s loop."""

    @staticmethod
    def forward(ctx, x, neuron):
        out, us = kernels.ternary_forward(neuron, x, keep_u=True)
        ctx.save_for_backward(us)
        ctx.neuron = neuron
        return out

    @staticmethod
    def backward(ctx, grad_o):
        (us,) = ctx.saved_tensors
        return kernels.ternary_backward(ctx.neuron, grad_o, us), None


class _ReLULayoutMatched(torch.autograd.Function):
    """``relu(x)`` whose backward first lays the incoming gradient out like the output. The keys'
    gradient comes back from the token products in another memory layout than the channels-last
    activation, and PyTorch's CPU ``threshold_backward`` on mixed layouts took 2.0-2.2 ms for a
    [64, 256, 7, 7] tensor against 0.2-0.3 ms for a copy and the same-layout kernel (one-off timing
    on a 2-core AMD EPYC). Same gradient values (a mask)."""

    @staticmethod
    def forward(ctx, x):
        out = torch.relu(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        if grad.stride() != out.stride():
            grad = torch.empty_like(out).copy_(grad)   # empty_like keeps out's strides
        return torch.ops.aten.threshold_backward(grad, out, 0)


class ReLUNeuron(nn.Module):
    """The ReLU "neuron" of A²OS²A's keys: K = max(0, x), no state, no threshold, full precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_sequence(x, "ReLUNeuron")
        if x.requires_grad:
            return _ReLULayoutMatched.apply(x)
        return torch.relu(x)
