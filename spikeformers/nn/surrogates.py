"""Surrogate gradients: the exact Heaviside forward ``x >= 0`` with a smooth derivative in the
backward pass (SpikingJelly's ``surrogate`` module defines the same functions).

``Sigmoid`` (alpha 4: Spikformer, Spike-driven Transformer, QKFormer), ``ATan`` (alpha 2:
SpikingResformer), ``StraightThrough`` and ``Triangle``. ``KERNEL_SURROGATES`` are the ones the C and
Triton neuron kernels implement; any other :class:`Surrogate` subclass runs the plain PyTorch loop.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError

__all__ = ["Surrogate", "Sigmoid", "ATan", "StraightThrough", "Triangle", "spike", "surrogate_from_config",
           "KERNEL_SURROGATES"]


class Surrogate:
    """A surrogate gradient: forward is the exact Heaviside ``x >= 0``, backward uses
    :meth:`derivative`. :meth:`primitive` is a smooth function whose derivative is
    :meth:`derivative` (used by tests and by ``smooth=True`` to make a neuron differentiable)."""

    name = "surrogate"

    def derivative(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def primitive(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _Heaviside.apply(x, self)

    def config(self) -> dict:
        return {"name": self.name, **{k: v for k, v in vars(self).items()}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))


class Sigmoid(Surrogate):
    """g(x) = alpha * sig(alpha x) * (1 - sig(alpha x)); primitive sig(alpha x). SpikingJelly's
    default, alpha = 4 in Spikformer, SDT and QKFormer."""

    name = "sigmoid"

    def __init__(self, alpha: float = 4.0):
        self.alpha = float(alpha)

    def derivative(self, x):
        s = torch.sigmoid(self.alpha * x)
        return self.alpha * s * (1.0 - s)

    def primitive(self, x):
        return torch.sigmoid(self.alpha * x)


class ATan(Surrogate):
    """g(x) = (alpha/2) / (1 + (pi alpha x / 2)^2); primitive atan(pi alpha x / 2)/pi + 1/2.
    SpikingJelly's ATan, alpha = 2 in SpikingResformer."""

    name = "atan"

    def __init__(self, alpha: float = 2.0):
        self.alpha = float(alpha)

    def derivative(self, x):
        return (self.alpha / 2.0) / (1.0 + (math.pi / 2.0 * self.alpha * x) ** 2)

    def primitive(self, x):
        return torch.atan(math.pi / 2.0 * self.alpha * x) / math.pi + 0.5


class StraightThrough(Surrogate):
    """Straight-through clamp: g(x) = 1 for |x| <= width, else 0; primitive
    clamp(x, -width, width) + 1/2 shifted. With width 0.5 on a ternary neuron of threshold 0.5 this
    is the Ternary-Spike code's ``clamp(u, -1, 1)`` backward (gradient 1 for |u| <= 1)."""

    name = "straight_through"

    def __init__(self, width: float = 0.5):
        self.width = float(width)

    def derivative(self, x):
        return (x.abs() <= self.width).to(x.dtype)

    def primitive(self, x):
        return torch.clamp(x, -self.width, self.width)


class Triangle(Surrogate):
    """g(x) = max(0, 1 - |x| / width) / width (a triangle of area 1); primitive its integral."""

    name = "triangle"

    def __init__(self, width: float = 1.0):
        self.width = float(width)

    def derivative(self, x):
        return torch.clamp(1.0 - x.abs() / self.width, min=0.0) / self.width

    def primitive(self, x):
        y = torch.clamp(x / self.width, -1.0, 1.0)
        return y - y * y.abs() / 2.0


_SURROGATES = {cls.name: cls for cls in (Sigmoid, ATan, StraightThrough, Triangle)}
KERNEL_SURROGATES = (Sigmoid, ATan, StraightThrough, Triangle)  # the ones the C / Triton kernels implement


def surrogate_from_config(cfg) -> Surrogate:
    """Build a surrogate from ``"sigmoid"``, ``{"name": "atan", "alpha": 2}`` or an instance."""
    if isinstance(cfg, Surrogate):
        return cfg
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in _SURROGATES:
        raise ConfigError(f"unknown surrogate {name!r}; expected one of {sorted(_SURROGATES)}")
    return _SURROGATES[name](**cfg)


class _Heaviside(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, surrogate):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ctx.surrogate.derivative(x), None


def spike(x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
    """Heaviside(x) (1 where x >= 0) with ``surrogate``'s gradient."""
    return _Heaviside.apply(x, surrogate)
