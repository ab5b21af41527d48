"""Speed paths that keep a model's parameters and state dict: 1x1 convolutions as matrix products,
channels-last memory, BatchNorm folding for inference, and the settings the trainer and
``spikeformers bench`` use.

- :func:`optimize` (training and inference): every 1x1 ``Conv1d`` / ``Conv2d`` (stride 1, no
  padding, groups 1) computes ``F.linear`` over the channel axis instead of a oneDNN convolution
  (same weights, same state dict; on CPU the bf16 matmul is several times faster than the 1x1
  convolution, its backward most of all), and 4-D tensors flow channels-last, so that the token
  matrix ``[T*B*H*W, C]`` of a 1x1 conv is a view, not a copy. Every ``BatchNorm2d`` becomes a
  :class:`FastBatchNorm2d`, whose training step on channels-last CPU tensors runs the C kernel of
  ``csrc/batchnorm.c`` (PyTorch's backward took 3.5-4.5x its forward here). Every ``BatchNorm1d``
  whose input has its channels innermost (``[N, C, L]`` with stride 1 on C: the transposed token
  matrix of the Spikformer / QKFormer blocks) is normalised as the channels-last ``[N, C, L, 1]``
  view (the same kernel) instead of by PyTorch's strided generic path, and keeps the layout.
  Results equal the plain model's up to float32 summation order (a different, equally exact
  order; see ``tests/test_speed.py``).
- :func:`keep_freed_memory` (process-wide, Linux/glibc): large tensors come from the heap and freed
  memory is kept for the next step instead of being handed back to the kernel, so a training step
  no longer pays page faults for every fresh activation and gradient buffer (about 10 % of a
  Spikformer bf16 train step here). The CLI turns it on; ``SPIKEFORMERS_MALLOC=0`` keeps glibc's
  defaults.
- :func:`fuse` (inference): folds every BatchNorm into the conv / linear that feeds it,
  ``W' = W * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``, and replaces the BN by
  ``nn.Identity``. Only pairs named ``<x>_conv<i>`` / ``<x>_linear<i>`` -> ``<x>_bn<i>`` in the
  same module are folded (the models build conv -> BN adjacently under these names); any other
  BatchNorm stays as it is and is reported.
- :func:`quantize_int8` (inference, after :func:`fuse`): every conv / linear layer computes in int8
  (weights symmetric per output channel, int32 sums through oneDNN) whenever its input holds
  integers in [0, 255] (binary spikes: exact in uint8), and in floating point otherwise. The
  weights' rounding changes the membranes, so this is an approximation like bf16, not an exact
  path: its accuracy change is measured in the README ("Performance").
"""

from __future__ import annotations

import ctypes
import os
import re
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

from . import kernels

__all__ = ["MatmulConv1d", "MatmulConv2d", "SmallMapConv2d", "FastMaxPool2d", "FastBatchNorm2d", "TokenBatchNorm1d",
           "bn_fire", "keep_freed_memory", "optimize", "fuse", "unfused_batchnorms", "Int8Products", "int8_available", "int8_inference", "quantize_int8"]


class MatmulConv2d(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` evaluated as ``F.linear`` on the channels-last view (same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        # F.linear folds a contiguous [N, H, W, C] into one matrix product; on a strided one it
        # falls back to a batched product over an expanded (and, under bf16 autocast, copied per
        # batch element) weight: qkformer_10_384 bf16 inference ran 14x slower so. One copy of the
        # activation is far cheaper.
        y = F.linear(x.permute(0, 2, 3, 1).contiguous(), self.weight.flatten(1), self.bias)  # [N, H, W, C']
        return y.permute(0, 3, 1, 2)                                                          # channels-last NCHW


class MatmulConv1d(nn.Conv1d):
    """A kernel-1 ``nn.Conv1d`` evaluated as ``F.linear`` over the channel axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            return super().forward(x)
        return F.linear(x.transpose(1, 2).contiguous(), self.weight.flatten(1), self.bias).transpose(1, 2)


def _tap_matrix(w: torch.Tensor, H: int, W: int) -> torch.Tensor:
    co, ci = w.shape[:2]
    wt = w.permute(0, 2, 3, 1).contiguous()          # [co, ky, kx, ci]: every slice below is ci-inner
    return torch.cat([wt[:, 1 - py:1 - py + H, 1 - px:1 - px + W].reshape(co, H * W * ci)
                      for py in range(H) for px in range(W)])


class _TapMatrix(torch.autograd.Function):
    """The weight of a 3x3 / stride 1 / padding 1 convolution on an ``H x W`` map (H, W <= 2) as
    one dense matrix ``[(p, co), (q, ci)]``: output position p = (py, px) sees input position
    q = (qy, qx) through tap (1 - py + qy, 1 - px + qx) (every pair is in range on such a map).
    The backward adds each position's block back into its taps, with no full-size temporaries
    (autograd's slice backward allocated and zero-filled the whole weight four times)."""

    @staticmethod
    def forward(ctx, w, H, W):
        ctx.H, ctx.W = H, W
        return _tap_matrix(w, H, W)

    @staticmethod
    def backward(ctx, g):
        H, W = ctx.H, ctx.W
        co = g.shape[0] // (H * W)
        ci = g.shape[1] // (H * W)
        gwt = g.new_zeros(co, 3, 3, ci)
        blocks = g.view(H * W, co, H, W, ci)
        for p in range(H * W):
            py, px = divmod(p, W)
            gwt[:, 1 - py:1 - py + H, 1 - px:1 - px + W] += blocks[p]
        return gwt.permute(0, 3, 1, 2), None, None       # [co, ci, 3, 3] (channels-last strides)


class SmallMapConv2d(nn.Conv2d):
    """A 3x3 ``nn.Conv2d`` (stride 1, padding 1, no dilation or groups) that, on maps of at most
    2x2 (the last stage of the ImageNet-style models at 32x32 input), computes the convolution
    as one matrix product ``[B, H*W*Cin] x [H*W*Cin, H*W*Cout]`` over the channels-last input
    (same parameters; exact, as every tap pair is in range on such a map). oneDNN's bf16
    backward for these shapes ran at about 50 GFLOP/s of useful work here (README, "Performance");
    larger maps keep the convolution.
    Without gradients (inference) the tap matrix is built once per weight version and reused."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2] > 2 or x.shape[-1] > 2:
            return super().forward(x)
        B, _, H, W = x.shape
        y = F.linear(x.permute(0, 2, 3, 1).reshape(B, -1), self._taps(H, W))          # [B, (p, co)]
        y = y.view(B, H, W, -1)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.permute(0, 3, 1, 2)                                                       # channels-last NCHW

    def _taps(self, H: int, W: int) -> torch.Tensor:
        w = self.weight
        if torch.is_grad_enabled() and w.requires_grad:
            return _TapMatrix.apply(w, H, W)
        try:
            key = (w.data_ptr(), w._version, w.dtype, H, W)   # an in-place update bumps _version
        except RuntimeError:                                  # an inference tensor has no version
            return _TapMatrix.apply(w.detach(), H, W)
        if getattr(self, "_tap_key", None) != key:
            self._tap_cache, self._tap_key = _TapMatrix.apply(w.detach(), H, W), key
        return self._tap_cache


def _is_small_map_3x3(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1)
            and m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros")


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
    output (``benchmarks/kernel_micro.py`` times both on the issue-5 shapes). Without gradients
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


def _hooked(*modules: nn.Module) -> bool:
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks
                or any(m._forward_hooks or m._forward_pre_hooks for m in modules))


def bn_fire(bn: nn.Module, neuron: nn.Module, y: torch.Tensor, T: int) -> torch.Tensor:
    """``neuron(bn(y))`` for the merged ``y[T*B, C, ...]``, returned time-first ``[T, B, C, ...]``.

    When ``bn`` is one of :func:`optimize`'s BatchNorms in training and ``neuron`` a LIF with
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
    if x4 is not None and bn.training and not _hooked(bn, neuron) and kernels.bnlif_supports(x4, T, neuron):
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


def _pointwise_shape(m: nn.Conv1d | nn.Conv2d) -> bool:
    """A kernel-1 convolution that is a matrix product over the channels (stride 1, no padding,
    dilation or groups)."""
    return (all(v == 1 for v in m.kernel_size) and all(v == 1 for v in m.stride) and all(v == 0 for v in m.padding)
            and all(v == 1 for v in m.dilation) and m.groups == 1 and m.padding_mode == "zeros")


def _is_pointwise(m: nn.Module) -> bool:
    return type(m) in (nn.Conv1d, nn.Conv2d) and _pointwise_shape(m)


def optimize(model: nn.Module, matmul_1x1: bool = True, channels_last: bool = True) -> nn.Module:
    """Switch ``model`` (in place) to the fast layer implementations; returns it. Parameters,
    buffers and the state dict are unchanged, so checkpoints load either way."""
    if matmul_1x1:
        for m in model.modules():
            if _is_pointwise(m):
                m.__class__ = MatmulConv2d if isinstance(m, nn.Conv2d) else MatmulConv1d
            elif _is_small_map_3x3(m):
                m.__class__ = SmallMapConv2d
    for m in model.modules():
        if isinstance(m, nn.MaxPool2d) and type(m).forward is nn.MaxPool2d.forward:   # a stock max-pool
            m.__class__ = FastMaxPool2d
        elif type(m) is nn.BatchNorm1d:
            m.__class__ = TokenBatchNorm1d
        elif type(m) is nn.BatchNorm2d:
            m.__class__ = FastBatchNorm2d
    if channels_last:
        model.to(memory_format=torch.channels_last)
        model._channels_last = True
    return model


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4   # glibc malloc.h


def keep_freed_memory() -> bool:
    """Ask glibc's malloc never to serve allocations by ``mmap`` and to keep up to 2 GiB of freed
    heap (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)``): the big, short-lived
    tensors of a train step then reuse memory already mapped instead of faulting in fresh pages
    each time. Returns whether it took effect (False off Linux, without glibc, or with
    ``SPIKEFORMERS_MALLOC=0``). The process's resident memory stays near its peak afterwards."""
    if os.environ.get("SPIKEFORMERS_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))


_BN = re.compile(r"^(?P<stem>.*)_bn(?P<sfx>\d*)$")


def _fold(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    w = layer.weight
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot fold {bn}: it tracks no running statistics")
    with torch.no_grad():
        scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        b = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
        new_b = (b - bn.running_mean) * scale + shift
        w.mul_(scale.reshape(-1, *([1] * (w.dim() - 1))).to(w.dtype))
        if layer.bias is None:
            layer.bias = nn.Parameter(new_b.to(w.dtype))
        else:
            layer.bias.copy_(new_b)


def fuse(model: nn.Module) -> nn.Module:
    """Fold every ``<x>_bn<i>`` BatchNorm into its ``<x>_conv<i>`` / ``<x>_linear<i>`` (in place,
    eval mode only); returns the model with ``model.fused_batchnorms`` set to the count."""
    if model.training:
        raise ValueError("fuse() folds the BatchNorm running statistics: call model.eval() first "
                         "(a fused model cannot be trained)")
    n = 0
    for parent in list(model.modules()):
        for name, bn in list(parent.named_children()):
            m = _BN.match(name)
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or m is None:
                continue
            for kind in ("conv", "linear"):
                layer = getattr(parent, f"{m['stem']}_{kind}{m['sfx']}", None)
                if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)) and layer.weight.shape[0] == bn.num_features:
                    _fold(layer, bn)
                    setattr(parent, name, nn.Identity())
                    n += 1
                    break
    model.fused_batchnorms = n
    model.train = _no_train.__get__(model)
    nn.Module.train(model, False)        # the new nn.Identity modules too (a module starts in training mode)
    return model


def _no_train(self, mode: bool = True):
    if mode:
        raise RuntimeError("this model was fused for inference (BatchNorm folded into the convs); "
                           "rebuild or reload it to train")
    return nn.Module.train(self, False)


def unfused_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BatchNorms :func:`fuse` left in place."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.compiler.disable
def _int8_eager(module: "Int8Products", x: torch.Tensor) -> torch.Tensor:
    return module._forward(x)


class Int8Products(nn.Module):
    """Inference wrapper of one ``nn.Linear`` / ``nn.Conv1d`` (kernel 1) / ``nn.Conv2d`` (and the
    speed variants above) whose products run in int8 when the input allows it exactly.

    The weight is rounded to int8 per output channel, ``w ~= s_o * q_o`` with ``s_o = max|w_o| / 127``;
    an input whose every value is an integer in [0, 255] (spikes, spike counts) is taken as uint8
    without loss, oneDNN sums ``x * q`` in int32 (exact), and the output is ``s_o * sum + bias`` in
    the input's dtype (or autocast's). So the only approximation is the weight's rounding. Any other
    input (the image of a stem, a time-averaged feature, a ternary spike, gradients enabled)
    goes through the wrapped float layer unchanged; ``int8_calls`` / ``float_calls`` count the two.
    The int8 weight is rounded from the layer's weight as it is at the first int8 call (its bf16
    values where the model was cast) and rebuilt whenever that weight changes."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        if not _int8_eligible(layer):
            raise TypeError(f"Int8Products wraps a Linear, a kernel-1 Conv1d or a zero-padded Conv2d, got {layer}")
        self.layer = layer
        self.int8_calls = self.float_calls = 0
        self._key = None
        if isinstance(layer, nn.Linear):
            self._kind = "linear"
        elif isinstance(layer, nn.Conv1d):
            self._kind = "conv1d"
        elif _pointwise_shape(layer):
            self._kind = "pointwise"          # a matrix product over the channels-last token matrix
        elif isinstance(layer, SmallMapConv2d):
            self._kind = "smallmap"           # one matrix product on maps of at most 2x2, else the conv
        else:
            self._kind = "conv"

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("layer"), name)   # stride, kernel_size, ... of the layer

    def _pack(self) -> None:
        w = self.layer.weight
        key = (w.data_ptr(), w._version, w.dtype)
        if key == self._key:
            return
        w32 = w.detach().float()
        scale = (w32.flatten(1).abs().amax(1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
        q = torch.round(w32 / scale.view(-1, *[1] * (w32.dim() - 1))).clamp_(-127, 127).to(torch.int8)
        self._scale, self._zp = scale, torch.zeros(scale.numel(), dtype=torch.int64)
        b = self.layer.bias
        self._bias = None if b is None else b.detach().float()
        self._q, self._taps, self._conv_packs = q, {}, {}
        if self._kind not in ("conv", "smallmap"):
            self._packed = torch.ops.onednn.qlinear_prepack(q.flatten(1), None)
        self._key = key

    def _conv_pack(self, shape: torch.Size):
        """The int8 weight packed for inputs of this shape: packed without it, oneDNN chose a kernel
        4.4x slower for qkformer_10_384's 96 -> 96 3x3 conv on [64, 96, 8, 8] (3.2 vs 0.72 ms)."""
        if shape not in self._conv_packs:
            L = self.layer
            self._conv_packs[shape] = torch.ops.onednn.qconv_prepack(
                self._q.contiguous(memory_format=torch.channels_last), self._scale, 1.0, 0, list(L.stride),
                list(L.padding), list(L.dilation), L.groups, list(shape))
        return self._conv_packs[shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():   # the uint8 check is a C call and inductor cannot lower the
            return _int8_eager(self, x)      # prepacked oneDNN weights: a graph break, run eagerly
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        xi = None
        wants_grad = torch.is_grad_enabled() and (x.requires_grad or self.layer.weight.requires_grad)
        if x.device.type == "cpu" and not wants_grad:
            xin = self._int8_input(x)
            xi = None if xin is None else kernels.to_uint8_exact(xin)
        if xi is None:
            self.float_calls += 1
            return self.layer(x)
        self.int8_calls += 1
        self._pack()
        out_dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if self._kind == "smallmap" and xi.shape[1] <= 2 and xi.shape[2] <= 2:
            return self._small_map(xi, out_dtype)
        if self._kind in ("conv", "smallmap"):
            L = self.layer
            return torch.ops.onednn.qconv2d_pointwise(xi, 1.0, 0, self._conv_pack(xi.shape), self._scale, self._zp,
                                                      self._bias, list(L.stride), list(L.padding), list(L.dilation),
                                                      L.groups, 1.0, 0, out_dtype, "none", [], "")
        y = torch.ops.onednn.qlinear_pointwise(xi.flatten(0, -2), 1.0, 0, self._packed, self._scale, self._zp,
                                               self._bias, 1.0, 0, out_dtype, "none", [], "")
        y = y.view(*xi.shape[:-1], y.shape[-1])
        if self._kind == "pointwise":
            return y.permute(0, 3, 1, 2)                  # channels-last NCHW, as MatmulConv2d returns
        return y.transpose(1, 2) if self._kind == "conv1d" else y

    def _small_map(self, xi: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """SmallMapConv2d's matrix product ``[B, H*W*Cin] x [H*W*Cin, H*W*Cout]`` in int8 (xi is
        the channels-last input as ``[B, H, W, Cin]``); the tap matrix's rows are the int8 taps of
        their output channel, so its scales are the channel's (oneDNN's 3x3 int8 convolution took
        33 ms for sdt_8_384's one [64, 384, 2, 2] map, against 0.3 ms for this product)."""
        B, H, W, _ = xi.shape
        if (H, W) not in self._taps:
            taps = _tap_matrix(self._q, H, W)
            bias = None if self._bias is None else self._bias.repeat(H * W)
            self._taps[H, W] = (torch.ops.onednn.qlinear_prepack(taps, None), self._scale.repeat(H * W),
                                self._zp.repeat(H * W), bias)
        packed, scale, zp, bias = self._taps[H, W]
        y = torch.ops.onednn.qlinear_pointwise(xi.reshape(B, -1), 1.0, 0, packed, scale, zp, bias, 1.0, 0,
                                               out_dtype, "none", [], "")
        return y.view(B, H, W, -1).permute(0, 3, 1, 2)

    def _int8_input(self, x: torch.Tensor) -> torch.Tensor | None:
        """The layer's input as oneDNN takes it (channels innermost), or None where the wrapped layer
        would not read it so (wrong rank: the float layer then raises its own error)."""
        if self._kind == "linear":
            return x.contiguous() if x.dim() >= 2 else None
        if self._kind == "conv1d":
            return x.transpose(1, 2).contiguous() if x.dim() == 3 else None
        if x.dim() != 4:
            return None
        x = x.contiguous(memory_format=torch.channels_last)
        small = self._kind == "smallmap" and x.shape[-2] <= 2 and x.shape[-1] <= 2
        return x.permute(0, 2, 3, 1) if self._kind == "pointwise" or small else x

    def extra_repr(self) -> str:
        return f"int8 calls {self.int8_calls}, float calls {self.float_calls}"


def _int8_eligible(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    if isinstance(m, nn.Conv1d):
        return _pointwise_shape(m)
    return isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str)


def int8_available() -> bool:
    """Whether this PyTorch has the oneDNN int8 operators :class:`Int8Products` calls (x86 CPU builds)."""
    import platform
    return (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.onednn, "qlinear_pointwise") and hasattr(torch.ops.onednn, "qconv2d_pointwise"))


def quantize_int8(model: nn.Module) -> nn.Module:
    """Wrap every eligible layer of an eval-mode ``model`` (call :func:`fuse` first, so that the
    folded weights are the ones rounded) in :class:`Int8Products`, in place; returns the model with
    ``model.int8_layers`` set to the count. CPU only: needs PyTorch's oneDNN int8 operators (x86).
    The products' int8 weights are an approximation: see the README for the accuracy it costs."""
    if model.training:
        raise ValueError("quantize_int8() is for inference: call model.eval() (and fuse()) first")
    if not int8_available():
        raise RuntimeError("int8 products need an x86 CPU build of PyTorch with oneDNN's int8 operators "
                           "(torch.ops.onednn.qlinear_pointwise / qconv2d_pointwise)")
    n = 0
    for parent in list(model.modules()):
        if isinstance(parent, Int8Products):
            continue
        for name, child in list(parent.named_children()):
            if _int8_eligible(child) and not isinstance(parent, Int8Products):
                setattr(parent, name, Int8Products(child).train(False))
                n += 1
    model.int8_layers = n
    return model


def int8_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the inference path that ``spikeformers bench`` times: the fast layers
    (:func:`optimize`), BatchNorm folded (:func:`fuse`), int8 products on spike inputs
    (:func:`quantize_int8`), weights in bf16; run it under bf16 autocast. The original is left as
    it is."""
    import copy
    return quantize_int8(fuse(optimize(copy.deepcopy(model)).eval())).to(torch.bfloat16)
