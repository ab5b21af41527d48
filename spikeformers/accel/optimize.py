"""Fast layers for training and inference, same parameters and state dict.

:func:`optimize` switches, in place, every 1x1 ``Conv1d`` / ``Conv2d`` (stride 1, no padding, groups
1) to ``F.linear`` over the channel axis (on CPU the bf16 matmul is several times faster than the
1x1 convolution, its backward most of all), every 3x3 convolution on a map of at most 2x2 to one
dense matrix product, every max-pool and BatchNorm to the C-kernel classes of
:mod:`spikeformers.nn.fused`, and makes 4-D tensors flow channels-last (the token matrix
``[T*B*H*W, C]`` of a 1x1 conv is then a view, not a copy). It swaps each module's class rather
than replacing the module, so parameters, buffers, optimizer references and checkpoints stay the
same objects. Results equal the plain model's up to float32 summation order (``tests/test_speed.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.fused import FastBatchNorm2d, FastMaxPool2d, TokenBatchNorm1d

__all__ = ["MatmulConv1d", "MatmulConv2d", "SmallMapConv2d", "optimize"]


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
    backward for these shapes ran at about 50 GFLOP/s of useful work here (``docs/performance.md``);
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
