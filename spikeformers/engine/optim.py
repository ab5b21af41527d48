"""Optimizers torch does not ship: LAMB; and an exponential moving average of the weights (EMA).

LAMB (You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
ICLR 2020, Algorithm 2), per parameter tensor x with gradient g at step t::

    m_t = b1 m_{t-1} + (1 - b1) g               v_t = b2 v_{t-1} + (1 - b2) g^2
    m^  = m_t / (1 - b1^t)                       v^  = v_t / (1 - b2^t)       (bias correction)
    u   = m^ / (sqrt(v^) + eps) + wd * x
    x  <- x - lr * (||x|| / ||u||) * u           (trust ratio; 1 when either norm is 0)

Like timm's ``Lamb`` (the optimizer the SDT recipes use): gradients are first clipped by their
global norm across all parameters (``max_grad_norm``, default 1.0; None disables), and the trust
ratio is only applied to parameters with weight decay unless ``always_adapt=True`` (parameters
without decay - biases, norms - then take a plain Adam step).
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from ..errors import ConfigError

__all__ = ["Lamb", "build_optimizer", "param_groups_weight_decay", "ema_decay", "build_ema"]


class Lamb(Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, bias_correction: bool = True,
                 max_grad_norm: float | None = 1.0, always_adapt: bool = False):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ConfigError(f"invalid LAMB hyper-parameters lr={lr}, eps={eps}, betas={betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, always_adapt=always_adapt)
        super().__init__(params, defaults)
        self.max_grad_norm = max_grad_norm

    @torch.no_grad()
    def _clip_factor(self) -> float:
        if self.max_grad_norm is None:
            return 1.0
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return 1.0
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        return float(torch.clamp(norm / self.max_grad_norm, min=1.0).reciprocal())

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clip = self._clip_factor()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                g = p.grad.float() * clip if clip != 1.0 else p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                if group["bias_correction"]:
                    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
                else:
                    bc1 = bc2 = 1.0
                update = (m / bc1) / ((v / bc2).sqrt().add_(group["eps"]))
                x = p.float()
                wd = group["weight_decay"]
                if wd != 0:
                    update.add_(x, alpha=wd)
                if wd != 0 or group["always_adapt"]:
                    w_norm = torch.linalg.vector_norm(x)
                    u_norm = torch.linalg.vector_norm(update)
                    trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                    update.mul_(trust)
                p.copy_((x - group["lr"] * update).to(p.dtype))
        return loss


def param_groups_weight_decay(model: torch.nn.Module, weight_decay: float, no_decay_1d: bool = True):
    """Two groups as timm builds them, the decayed first: no weight decay on 1-D parameters (biases,
    norms, scalars such as PLIF's w)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if no_decay_1d and (p.ndim <= 1 or name.endswith(".bias")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _fusable(params) -> bool:
    """Whether torch's fused (single-kernel, multi-tensor) AdamW / Adam / SGD can take ``params``:
    floating-point tensors, all on the CPU or all on CUDA (torch >= 2.4 has CPU fused kernels)."""
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    devices = {t.device.type for t in tensors}
    return bool(tensors) and len(devices) == 1 and devices <= {"cpu", "cuda"} and all(
        t.is_floating_point() for t in tensors)


def build_optimizer(name: str, model_or_params, lr: float, weight_decay: float = 0.0,
                    fused: bool | None = None, **kw) -> Optimizer:
    """``adamw`` | ``lamb`` | ``sgd`` | ``adam``, with timm's no-decay-on-1-D-parameters groups
    when given a module. ``fused=None`` uses torch's fused AdamW / Adam / SGD step where the
    parameters allow it (one pass over all tensors instead of a Python loop of small ops; the same
    update up to float rounding); ``False`` keeps the per-tensor loop."""
    params = (param_groups_weight_decay(model_or_params, weight_decay)
              if isinstance(model_or_params, torch.nn.Module) else model_or_params)
    # lists, not iterators: _fusable reads every group's tensors before the optimizer does
    params = [dict(g, params=list(g["params"])) if isinstance(g, dict) else g for g in params]
    name = name.lower()
    if fused is None:
        fused = name in ("adamw", "adam", "sgd") and _fusable(params)
    fuse = {"fused": True} if fused else {}
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=kw.get("betas", (0.9, 0.999)),
                                 eps=kw.get("eps", 1e-8), **fuse)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **fuse)
    if name == "lamb":
        return Lamb(params, lr=lr, weight_decay=weight_decay, betas=kw.get("betas", (0.9, 0.999)),
                    eps=kw.get("eps", 1e-6), max_grad_norm=kw.get("max_grad_norm", 1.0))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=kw.get("momentum", 0.9), **fuse)
    raise ConfigError(f"unknown optimizer {name!r}; expected adamw, adam, lamb or sgd")


def ema_decay(decay: float, n_averaged: int, warmup: bool = True) -> float:
    """The EMA decay used at update ``n_averaged + 1``: ``decay``, or with ``warmup`` the smaller of
    ``decay`` and ``(1 + n) / (10 + n)`` (the warm-up of TensorFlow's ExponentialMovingAverage
    ``num_updates``), so that the average is not dominated by the random initial weights early on."""
    return min(decay, (1.0 + n_averaged) / (10.0 + n_averaged)) if warmup else decay


def build_ema(model: torch.nn.Module, decay: float, warmup: bool = True):
    """A :class:`torch.optim.swa_utils.AveragedModel` holding ``ema <- d * ema + (1 - d) * w`` of
    ``model``'s parameters and floating buffers (BatchNorm running statistics too), ``d`` given by
    :func:`ema_decay`; integer buffers (BatchNorm's batch counter) are copied. Call
    ``ema.update_parameters(model)`` after each optimizer step and evaluate ``ema.module``."""
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"EMA decay must be in (0, 1), e.g. 0.9998; got {decay}")
    from torch.optim.swa_utils import AveragedModel

    def update(ema_tensors, tensors, n_averaged):
        d = ema_decay(decay, int(n_averaged), warmup)
        if torch.is_floating_point(ema_tensors[0]):
            torch._foreach_lerp_(ema_tensors, tensors, 1.0 - d)
        else:
            torch._foreach_copy_(ema_tensors, tensors)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)
