"""int8 products for inference (x86 CPUs with oneDNN's int8 operators).

:func:`quantize_int8` (after :func:`~spikeformers.accel.fuse`) makes every conv / linear layer
compute in int8 (weights symmetric per output channel, int32 sums through oneDNN) whenever its
input holds integers in [0, 255] (binary spikes: exact in uint8), and in floating point otherwise.
The weights' rounding changes the membranes, so this is an approximation like bf16, not an exact
path (``docs/performance.md`` gives its accuracy change).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..errors import ConfigError, UnsupportedError
from .fuse import fuse
from .optimize import SmallMapConv2d, _pointwise_shape, _tap_matrix, optimize

__all__ = ["Int8Products", "int8_available", "int8_inference", "quantize_int8"]


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
            raise ConfigError(f"Int8Products wraps a Linear, a kernel-1 Conv1d or a zero-padded Conv2d, got {layer}")
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
    The products' int8 weights are an approximation: ``docs/performance.md`` gives the accuracy it costs."""
    if model.training:
        raise ConfigError("quantize_int8() is for inference: call model.eval() (and fuse()) first")
    if not int8_available():
        raise UnsupportedError("int8 products need an x86 CPU build of PyTorch with oneDNN's int8 operators "
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
