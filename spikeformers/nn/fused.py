"""Modules and autograd functions backed by the C kernels (:mod:`spikeformers.kernels`), with the
same parameters, buffers and results as the stock PyTorch layers they stand in for.

- :class:`FastBatchNorm2d` / :class:`TokenBatchNorm1d`: training-mode BatchNorm of channels-last
  CPU tensors in two C passes each (PyTorch's CPU backward for channels-last took 3.5-4.5x its
  forward), and BN1d on a transposed token matrix as its channels-last ``[N, C, L, 1]`` view.
- :class:`FastMaxPool2d`: max pooling whose backward keeps one byte per output (the winning tap).
- :func:`bn_fire`: ``neuron(bn(y))``; for a fast BatchNorm feeding a LIF, forward in one C kernel
  that never stores the BatchNorm output. Every block of the models calls it; with stock
  BatchNorms it is exactly the composition.

The models are built from stock layers; :func:`spikeformers.accel.optimize` switches them to these
classes. Results equal the stock layers' up to float32 summation order (``tests/test_speed.py``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module

from .. import kernels
from .neurons import LIF
from .surrogates import KERNEL_SURROGATES

__all__ = ["FastBatchNorm2d", "TokenBatchNorm1d", "FastMaxPool2d", "bn_fire", "hooked"]


class _MaxPool(torch.autograd.Function):
    """Max pooling through the C kernel (kernels.maxpool_*); saves one byte per output (the
    winning tap) for the backward."""

    @staticmethod
    def forward(ctx, x, k, s, p):
        y, arg = kernels.maxpool_forward(x, k, s, p, keep_arg=ctx.needs_input_grad[0])
        if arg is not None:
            ctx.save_for_backward(arg)
        ctx.k, ctx.s, ctx.p, ctx.in_shape, ctx.in_dtype = k, s, p, x.shape, x.dtype
        return y

    @staticmethod
    def backward(ctx, gy):
        (arg,) = ctx.saved_tensors
        return kernels.maxpool_backward(gy, arg, ctx.in_shape, ctx.in_dtype, ctx.k, ctx.s, ctx.p), None, None, None


def _single(v) -> int | None:
    v = v if isinstance(v, (tuple, list)) else (v, v)
    return int(v[0]) if len(v) == 2 and v[0] == v[1] else None


class FastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (square window, no dilation, floor mode) that on a channels-last CPU
    float32 / bfloat16 tensor runs the C kernel of ``csrc/pool.c``: the same values and the same
    winner on ties (the first maximum, as PyTorch's kernel), the backward from one byte per
    output (``benchmarks/kernel_micro.py`` times both). Without gradients
    (inference) PyTorch's own kernel runs: it is the reference the C kernel matches, and it was
    3x faster on the 48-channel 32x32 map of qkformer_10_384 here (0.8 vs 2.4 ms, bf16, 2 threads)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, p = _single(self.kernel_size), _single(self.stride), _single(self.padding)
        if (None in (k, s, p) or _single(self.dilation) != 1 or self.ceil_mode or self.return_indices
                or not 0 < k <= 15 or 2 * p > k or not kernels.maxpool_supports(x)
                or not (torch.is_grad_enabled() and x.requires_grad)):
            return super().forward(x)
        return _MaxPool.apply(x, k, s, p)


class _BatchNormTrain(torch.autograd.Function):
    """Training-mode BatchNorm through the C kernel (kernels.batchnorm_*): y and the batch mean /
    biased var; backward gives x, weight and bias gradients."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        ctx.set_materialize_grads(False)   # mean / var get no gradient: no zero tensors for them
        y, mean, var, rstd = kernels.batchnorm_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, gy, _gm, _gv):
        if gy is None:
            return None, None, None, None
        x, weight, mean, rstd = ctx.saved_tensors
        return *_batchnorm_grads(ctx, gy, x, weight, mean, rstd), None


def _batchnorm_grads(ctx, gy, x, weight, mean, rstd) -> tuple:
    """(x, weight, bias) gradients of a BatchNorm autograd Function whose inputs start x, weight, bias."""
    gx, gw, gb = kernels.batchnorm_backward(gy, x, weight, mean, rstd)
    return (gx, gw.to(weight.dtype) if weight is not None else None,
            gb.to(weight.dtype) if ctx.needs_input_grad[2] else None)


class _BatchNormLIF(torch.autograd.Function):
    """Training BatchNorm fed straight into a LIF neuron: forward in one C kernel
    (kernels.bnlif_forward, the BatchNorm output never stored), backward as the LIF backward then
    the BatchNorm backward (kernels.lif_backward, kernels.batchnorm_backward). Returns the spikes
    and the batch mean / biased var."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, neuron, T):
        ctx.set_materialize_grads(False)   # mean / var get no gradient: no zero tensors for them
        s, hs, mean, var, rstd = kernels.bnlif_forward(x, weight, bias, eps, neuron, T, keep_h=True)
        ctx.save_for_backward(x, weight, hs, mean, rstd)
        ctx.neuron, ctx.T = neuron, T
        ctx.mark_non_differentiable(mean, var)
        return s, mean, var

    @staticmethod
    def backward(ctx, gs, _gm, _gv):
        if gs is None:
            return None, None, None, None, None, None
        x, weight, hs, mean, rstd = ctx.saved_tensors
        n, T = ctx.neuron, ctx.T
        a, b = n.charge_coeffs()
        gy = kernels.lif_backward(n, gs.reshape(T, -1, *gs.shape[1:]), hs.reshape(T, -1, *hs.shape[1:]), a, b)
        return *_batchnorm_grads(ctx, gy.flatten(0, 1), x, weight, mean, rstd), None, None, None


def _update_running_stats(bn: nn.modules.batchnorm._BatchNorm, mean, var, n: int) -> None:
    """nn.BatchNorm's running-average update from the batch ``mean`` and biased ``var`` of ``n`` values."""
    if bn.track_running_stats and bn.running_mean is not None and not kernels.update_running_stats(bn, mean, var, n):
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - f).add_(mean, alpha=f)
            bn.running_var.mul_(1 - f).add_(var * (n / max(n - 1, 1)), alpha=f)


def _batchnorm(bn: nn.modules.batchnorm._BatchNorm, x4: torch.Tensor, fallback) -> torch.Tensor:
    """``bn`` on the channels-last 4-D ``x4``: in training through the C kernel when it takes the
    tensor (same statistics and running-average update as nn.BatchNorm), else ``fallback(x4)``."""
    if not (bn.training and kernels.batchnorm_supports(x4)):
        return fallback(x4)
    y, mean, var = _BatchNormTrain.apply(x4, bn.weight, bn.bias, bn.eps)
    _update_running_stats(bn, mean, var, x4.numel() // x4.shape[1])
    return y


def hooked(*modules: nn.Module) -> bool:
    """Whether any forward (pre-)hook watches ``modules`` (a fused kernel would skip it)."""
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks
                or any(m._forward_hooks or m._forward_pre_hooks for m in modules))


def _fusable_lif(neuron: nn.Module) -> bool:
    """A fixed-coefficient LIF with decay_input, a hard Heaviside and a surrogate the kernels know."""
    return (type(neuron) is LIF and neuron.decay_input and not neuron.smooth
            and type(neuron.surrogate) in KERNEL_SURROGATES)


def bn_fire(bn: nn.Module, neuron: nn.Module, y: torch.Tensor, T: int) -> torch.Tensor:
    """``neuron(bn(y))`` for the merged ``y[T*B, C, ...]``, returned time-first ``[T, B, C, ...]``.

    When ``bn`` is one of :func:`~spikeformers.accel.optimize`'s BatchNorms in training and ``neuron`` a LIF with
    decay_input, on a CPU tensor the C kernels take (:func:`spikeformers.kernels.bnlif_supports`),
    the forward of both is one C kernel that never stores the BatchNorm output; the backward is the
    LIF kernel then the BatchNorm kernel. Same spikes, gradients, statistics and running averages
    as ``bn`` then ``neuron`` through the C kernels (``tests/test_speed.py``); else (and whenever
    either module has forward hooks, which the fused kernel would skip) it is exactly that
    composition."""
    x4 = None
    if isinstance(bn, FastBatchNorm2d) and y.dim() == 4:
        x4 = y
    elif isinstance(bn, TokenBatchNorm1d) and y.dim() == 3 and y.stride(1) == 1 and y.shape[2] > 1:
        x4 = y.unsqueeze(-1)
    if x4 is not None and bn.training and not hooked(bn, neuron) and _fusable_lif(neuron) and kernels.bnlif_supports(x4, T):
        s, mean, var = _BatchNormLIF.apply(x4, bn.weight, bn.bias, bn.eps, neuron, T)
        _update_running_stats(bn, mean, var, x4.numel() // x4.shape[1])
        s = s.squeeze(-1) if x4 is not y else s
        return s.reshape(T, -1, *s.shape[1:])
    z = bn(y)
    return neuron(z.reshape(T, -1, *z.shape[1:]))


class FastBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters and buffers) whose training step on a channels-last
    CPU tensor runs the C kernel of ``csrc/batchnorm.c``: the same batch statistics and running
    averages, forward and backward in two passes each. PyTorch's CPU backward for channels-last
    took 3.5-4.5x its forward here. Anything else (eval, other layouts or devices, kernels off
    by ``SPIKEFORMERS_KERNELS=0``) takes ``nn.BatchNorm2d``'s path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        return _batchnorm(self, x, super().forward)


class TokenBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` (same parameters and buffers) that normalises a channels-innermost
    ``[N, C, L]`` input as the channels-last ``[N, C, L, 1]`` view.

    The blocks of Spikformer and QKFormer apply BN1d to a transposed token matrix (stride 1 on C);
    PyTorch's CPU BatchNorm has no kernel for that 3-D layout and takes a strided path that made
    BatchNorm about half of a Spikformer train step. On the view, training runs the C kernel of
    :class:`FastBatchNorm2d` (else PyTorch's channels-last kernel). The same statistics (over N
    and L), the same running-average update; only the summation order differs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and x.stride(1) == 1 and x.shape[2] > 1:
            return _batchnorm(self, x.unsqueeze(-1), self._torch_view).squeeze(-1)
        return super().forward(x)

    def _torch_view(self, x4: torch.Tensor) -> torch.Tensor:
        y = super().forward(x4)
        if y.requires_grad:
            # torch 2.13's CPU BatchNorm backward returns wrong gradients for this view when the
            # incoming gradient is not in the input's layout (tests/test_speed.py checks both)
            y.register_hook(_as_input_layout)
        return y

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if not (x.dim() == 4 and x.shape[3] == 1):   # the [N, C, L, 1] view of forward
            super()._check_input_dim(x)


def _as_input_layout(grad: torch.Tensor) -> torch.Tensor:
    return grad.squeeze(-1).transpose(1, 2).contiguous().transpose(1, 2).unsqueeze(-1)
