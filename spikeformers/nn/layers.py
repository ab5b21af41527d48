"""Shared building blocks: time merging, conv-BN-neuron units, the patch-splitting stems, the
spiking MLPs, and the input contract of every model.

Convention: inside a model every tensor is time-first ``[T, B, ...]``. Convs,
linears and BatchNorm run on the merged ``[T*B, ...]`` view (``flatten(0, 1)``, index t*B + b), so
BatchNorm statistics pool over time, batch and space exactly as in the official models; neurons run
over the leading T axis.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .. import kernels
from ..errors import ConfigError, InputError
from .fused import bn_fire
from .neurons import LIF

__all__ = ["seq", "conv_bn_fire", "linear_bn_fire", "token_mean", "seq_once", "lif", "MaxPool", "SPS", "IPSPS",
           "SpikingMLP", "LinearMLP", "ConvMLP", "SpikingModel", "trunc_normal_init", "check_pooling_stat",
           "stem_out_size"]


def seq(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a per-sample module ``fn`` to ``x[T, B, ...]`` through the merged ``[T*B, ...]`` view."""
    y = fn(x.flatten(0, 1))
    return y.reshape(x.shape[0], x.shape[1], *y.shape[1:])


def conv_bn_fire(conv: Callable, bn: nn.Module, neuron: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``neuron(seq(bn . conv, x))`` for ``x[T, B, ...]``: the conv on the merged view, then BatchNorm
    and the neuron as one fused kernel where :func:`spikeformers.nn.fused.bn_fire` can (a training step
    of a :func:`~spikeformers.accel.optimize`-d model on CPU), else exactly that composition.
    A stem's image repeated over T (see :func:`seq_once`) is convolved once (a conv given as a plain
    function, whose modules cannot be inspected, always runs on the merged view)."""
    y = seq_once(conv, x, conv, bn) if isinstance(conv, nn.Module) else conv(x.flatten(0, 1))
    return bn_fire(bn, neuron, y, x.shape[0])


def linear_bn_fire(m: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """``{name}_lif(BN1d({name}_linear(x)))`` on tokens ``x[T, B, N, D]`` -> spikes ``[T, B, N, D']``;
    BN1d normalises the channels of the transposed token matrix (:func:`~spikeformers.nn.fused.bn_fire` may fuse it)."""
    y = getattr(m, f"{name}_linear")(x.flatten(0, 1))                                   # [TB, N, D']
    s = bn_fire(getattr(m, f"{name}_bn"), getattr(m, f"{name}_lif"), y.transpose(-1, -2), x.shape[0])
    return s.transpose(-1, -2).contiguous()                                             # [T, B, N, D']


def seq_once(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *modules: nn.Module) -> torch.Tensor:
    """``fn(x.flatten(0, 1))``, merged ``[T*B, ...]``, for a per-sample ``fn`` built from ``modules``.
    When ``x[T, B, ...]`` is one input repeated over T (direct coding: :meth:`SpikingModel.to_time_first`
    hands a stride-0 view) and nothing learns or gathers batch statistics (no gradients, every module
    in eval mode), ``fn`` runs on one step and its output is copied T times, in its own memory layout:
    the same values (each sample is processed alone either way; ``tests/test_speed.py`` checks the
    logits), a T-th of the stem's first convolution (and pooling), and no copy of the repeated image."""
    T = x.shape[0]
    if T > 1 and x.stride(0) == 0 and not torch.is_grad_enabled() and not any(m.training for m in modules):
        y = fn(x[0])
        if y.is_contiguous() or (y.dim() == 4 and y.is_contiguous(memory_format=torch.channels_last)):
            out = torch.empty_strided((T, *y.shape), (y.numel(), *y.stride()), dtype=y.dtype, device=y.device)
            return out.copy_(y.unsqueeze(0).expand(T, *y.shape)).flatten(0, 1)
    return fn(x.flatten(0, 1))


class _TokenMean(torch.autograd.Function):
    """Mean over the last ``k`` axes, its gradient laid out like the input. Autograd's own mean
    backward is an expanded tensor, which the flatten before a token mean turns into a contiguous
    one: behind a channels-last stage every residual gradient then met a channels-last one in
    another layout (about 2.4 ms of slow mixed-layout adds in a qkformer_10_384 backward here)."""

    @staticmethod
    def forward(ctx, x, k):
        ctx.shape, ctx.stride, ctx.k = x.shape, x.stride(), k
        return x.mean(tuple(range(-k, 0)))

    @staticmethod
    def backward(ctx, g):
        k, shape = ctx.k, ctx.shape
        n = math.prod(shape[-k:])
        out = torch.empty_strided(shape, ctx.stride, dtype=g.dtype, device=g.device)
        return out.copy_((g / n)[(...,) + (None,) * k].expand(shape)), None


def token_mean(x: torch.Tensor, k: int = 2) -> torch.Tensor:
    """The mean of ``x`` over its last ``k`` axes (the token map ``H, W`` or the tokens ``N``),
    with its gradient laid out like ``x`` (channels-last stays channels-last)."""
    if x.dim() > k and x.requires_grad and kernels.is_dense(x):
        return _TokenMean.apply(x, k)
    return x.mean(tuple(range(-k, 0)))


def lif(v_threshold: float = 1.0, **kw) -> LIF:
    """The official models' neuron: SpikingJelly MultiStepLIFNode(tau=2, detach_reset=True),
    Sigmoid(alpha=4) surrogate, hard reset to 0."""
    return LIF(tau=kw.pop("tau", 2.0), v_threshold=v_threshold, detach_reset=kw.pop("detach_reset", True), **kw)


class MaxPool(nn.MaxPool2d):
    """The max-pool of every official SPS stem: kernel 3, stride 2, padding 1 (halves even sizes)."""

    def __init__(self):
        super().__init__(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False)


def check_pooling_stat(pooling_stat: str) -> None:
    """A stem's pooling pattern: 4 characters of 0/1, one per stage (1: that stage halves the map)."""
    if not isinstance(pooling_stat, str) or len(pooling_stat) != 4 or set(pooling_stat) - {"0", "1"}:
        raise ConfigError(f"pooling_stat must be 4 characters of 0/1, got {pooling_stat!r}")


def stem_out_size(img_size: int, pooling_stat: str) -> int:
    """The token map's side after a stem: every "1" stage halves it, rounding up (kernel 3, stride 2,
    padding 1 max-pooling or strided conv)."""
    for p in pooling_stat:
        img_size = (img_size - 1) // 2 + 1 if p == "1" else img_size
    return img_size


class SPS(nn.Module):
    """Spiking Patch Splitting: four conv3x3-BN stages D/8 -> D/4 -> D/2 -> D, stage i max-pooling
    when ``pooling_stat[i] == "1"``, then a conv3x3-BN relative position encoding (``rpe``).

    ``output="membrane"``: the Spike-driven Transformer's ``MS_SPS``. Stages 1-3 fire (LIF) before
    pooling; stage 4 pools the real-valued BN output, and the RPE of its spikes is *added* to the
    membrane::

        s1 = MP?(SN(BN(C3(x))));  s2 = MP?(SN(BN(C3(s1))));  s3 = MP?(SN(BN(C3(s2))))
        u  = MP?(BN(C3(s3)));     U0 = u + BN(C3_rpe(SN(u)))            -> [T, B, D, H', W']

    ``output="spike"``: Spikformer's ``SPS``. All four stages fire before pooling, and the fired RPE
    is added to the spikes, X0 = x + SN(BN(C3_rpe(x))) (values in {0, 1, 2}).

    Attribute names equal the official state-dict names (``proj_conv``, ``proj_bn``, ...,
    ``rpe_conv``, ``rpe_bn``).
    """

    def __init__(self, in_chans: int, embed_dim: int, pooling_stat: str = "1111", neuron=lif,
                 output: str = "membrane"):
        super().__init__()
        check_pooling_stat(pooling_stat)
        if output not in ("membrane", "spike"):
            raise ConfigError(f"SPS output must be 'membrane' or 'spike', got {output!r}")
        if embed_dim % 8:
            raise ConfigError(f"embed_dim must be divisible by 8 (stem widths D/8, D/4, D/2), got {embed_dim}")
        self.pooling_stat, self.output = pooling_stat, output
        widths = [in_chans, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        for i in range(4):
            sfx = "" if i == 0 else str(i)
            setattr(self, f"proj_conv{sfx}", nn.Conv2d(widths[i], widths[i + 1], 3, 1, 1, bias=False))
            setattr(self, f"proj_bn{sfx}", nn.BatchNorm2d(widths[i + 1]))
            if i < 3 or output == "spike":
                setattr(self, f"proj_lif{sfx}", neuron())
        self.rpe_lif = neuron()
        self.rpe_conv = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1, bias=False)
        self.rpe_bn = nn.BatchNorm2d(embed_dim)
        self.pool = MaxPool()

    def out_size(self, img_size: int) -> int:
        return stem_out_size(img_size, self.pooling_stat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [T, B, C, H, W]
        spike = self.output == "spike"
        for i in range(4 if spike else 3):
            sfx = "" if i == 0 else str(i)
            x = conv_bn_fire(getattr(self, f"proj_conv{sfx}"), getattr(self, f"proj_bn{sfx}"),
                             getattr(self, f"proj_lif{sfx}"), x)
            if self.pooling_stat[i] == "1":
                x = seq(self.pool, x)
        if spike:
            return x + conv_bn_fire(self.rpe_conv, self.rpe_bn, self.rpe_lif, x)
        u = seq(lambda z: self.proj_bn3(self.proj_conv3(z)), x)
        if self.pooling_stat[3] == "1":
            u = seq(self.pool, u)
        return u + seq(lambda z: self.rpe_bn(self.rpe_conv(z)), self.rpe_lif(u))


class SpikingMLP(nn.Module):
    """Spiking MLP of the Spike-driven Transformer (``MS_MLP_Conv``) on a membrane ``U[T,B,D,H,W]``:
    ``BN(C1_fc2(SN(BN(C1_fc1(SN(U))))))`` with D -> hidden -> D, 1x1 convs with bias. Returns the
    increment; the caller adds it to the membrane stream."""

    def __init__(self, dim: int, hidden: int, neuron=lif):
        super().__init__()
        self.fc1_lif = neuron()
        self.fc1_conv = nn.Conv2d(dim, hidden, 1)
        self.fc1_bn = nn.BatchNorm2d(hidden)
        self.fc2_lif = neuron()
        self.fc2_conv = nn.Conv2d(hidden, dim, 1)
        self.fc2_bn = nn.BatchNorm2d(dim)
        self.res = dim == hidden  # official quirk: inner residual when hidden == dim

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        s = self.fc1_lif(u)
        if self.res:
            h = u + seq(lambda z: self.fc1_bn(self.fc1_conv(z)), s)
            s = self.fc2_lif(h)
        else:  # fc2_lif fires fc1_bn's output directly: one fused kernel
            s = conv_bn_fire(self.fc1_conv, self.fc1_bn, self.fc2_lif, s)
        return seq(lambda z: self.fc2_bn(self.fc2_conv(z)), s)


class LinearMLP(nn.Module):
    """Spikformer's MLP in its official CIFAR file (``cifar10/model.py``): SN(BN1d(Linear)) twice, D -> hidden -> D."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1_linear, self.fc1_bn, self.fc1_lif = nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), lif()
        self.fc2_linear, self.fc2_bn, self.fc2_lif = nn.Linear(hidden, dim), nn.BatchNorm1d(dim), lif()

    def forward(self, x):  # [T, B, N, D]
        for i in (1, 2):
            x = linear_bn_fire(self, f"fc{i}", x)
        return x


class ConvMLP(nn.Module):
    """Spikformer's MLP in its official ImageNet file (``conv_dim=2``: Conv2d 1x1 + BN2d on the token grid) or of the DVS
    file (``conv_dim=1``: Conv1d k=1 + BN1d)."""

    def __init__(self, dim: int, hidden: int, conv_dim: int = 2):
        super().__init__()
        Conv, BN = (nn.Conv2d, nn.BatchNorm2d) if conv_dim == 2 else (nn.Conv1d, nn.BatchNorm1d)
        self.conv_dim = conv_dim
        self.fc1_conv, self.fc1_bn, self.fc1_lif = Conv(dim, hidden, 1), BN(hidden), lif()
        self.fc2_conv, self.fc2_bn, self.fc2_lif = Conv(hidden, dim, 1), BN(dim), lif()

    def forward(self, x, grid):  # x [T, B, D, N], grid (H, W)
        T, B, D, N = x.shape
        if self.conv_dim == 2:
            x = x.reshape(T, B, D, *grid)
        for i in (1, 2):
            x = conv_bn_fire(getattr(self, f"fc{i}_conv"), getattr(self, f"fc{i}_bn"), getattr(self, f"fc{i}_lif"), x)
        return x.reshape(T, B, D, N)


def trunc_normal_init(module: nn.Module, std: float = 0.02) -> None:
    """timm-style init used by the official models: trunc-normal(std) conv/linear weights, zero bias,
    BN weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SpikingModel(nn.Module):
    """Base class of every model: the public input contract and the metadata the library needs.

    ``forward`` accepts a static image batch ``[B, C, H, W]`` (repeated ``T`` times inside: direct
    coding) or an event/frame sequence ``[B, T, C, H, W]`` (its own T), checks shape and dtype
    against the model's ``in_chans`` / ``img_size``, and hands ``[T, B, C, H, W]`` to
    :meth:`forward_tokens`. Subclasses set ``self.T``, ``self.in_chans``, ``self.img_size``,
    ``self.num_classes`` and implement ``forward_tokens`` returning logits ``[B, K]`` (or ``[T, B, K]``
    for TET-style outputs).
    """

    family = "generic"
    T: int
    in_chans: int
    img_size: int
    num_classes: int

    def to_time_first(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{type(self).__name__} expects a torch.Tensor, got {type(x).__name__}")
        c, s = self.in_chans, self.img_size
        want = f"[B,{c},{s},{s}] (static image) or [B,T,{c},{s},{s}] (frames)"
        if not x.is_floating_point():
            raise InputError(f"expected a floating-point input {want} (normalised images), got dtype {x.dtype}")
        # NaN / inf would flow through the neurons as if they were currents (a NaN never crosses a
        # threshold, inf always does) and give finite logits: refuse them. Checked on CPU tensors outside
        # torch.compile; on a GPU the check would cost a host synchronisation per call and is skipped.
        if x.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise InputError(f"the input holds {bad} NaN or infinite value(s); expected finite normalised "
                             "images or frames (check the data pipeline)")
        if x.dim() == 4 and tuple(x.shape[1:]) == (c, s, s):
            return x.unsqueeze(0).expand(self.T, *x.shape)
        if x.dim() == 5 and tuple(x.shape[2:]) == (c, s, s):
            return x.transpose(0, 1)
        got = "[" + ",".join(["B"] + [str(d) for d in x.shape[1:]]) + "]"
        raise ConfigError(f"expected input {want}, got {got}")

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(self.to_time_first(x))

    def save_pretrained(self, folder, dtype=None, **card):
        """Write a pretrained folder (``config.json``, ``model.safetensors``, ``README.md`` card) that
        ``spikeformers.from_pretrained(folder)`` loads back; see
        :func:`spikeformers.models.pretrained.save_pretrained` for ``dtype`` and the card's facts."""
        from ..models.pretrained import save_pretrained
        return save_pretrained(self, folder, dtype=dtype, **card)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Save and upload to the Hugging Face Hub (the ``hub`` extra); see
        :func:`spikeformers.models.pretrained.push_to_hub`."""
        from ..models.pretrained import push_to_hub
        return push_to_hub(self, repo_id, **kwargs)


class IPSPS(nn.Module):
    """Information-Protection SPS of STMixer (Deng et al., NeurIPS 2024; official
    code), with a membrane output for the membrane-shortcut backbone::

        main:  s1 = SN(BN(C3/s1(x)));  s2 = SN(BN(C3/s2(s1)));  s3 = SN(BN(C3/s3(s2)))   D/8, D/4, D/2
               m  = BN(C3/s4(s3))                                                       7D/8 channels
        short: p  = BN(C_{2^k}/2^k(x))     one conv, kernel = stride = 2^k, on the *analog* input, D/8
        U0 = concat(m, p)                                                              [T,B,D,H',W']

    Stage i has stride 2 where ``pooling_stat[i] == "1"`` (strided convs, no max-pool); k is the
    number of such stages, so both paths reach the same token map. The short path keeps
    information the spiking main path loses; it is a second analog-input (MAC) layer.
    """

    def __init__(self, in_chans: int, embed_dim: int, pooling_stat: str = "1111", neuron=lif):
        super().__init__()
        check_pooling_stat(pooling_stat)
        if embed_dim % 8:
            raise ConfigError(f"embed_dim must be divisible by 8 (stem widths D/8 .. 7D/8), got {embed_dim}")
        self.pooling_stat = pooling_stat
        widths = [in_chans, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim - embed_dim // 8]
        for i in range(4):
            stride = 2 if pooling_stat[i] == "1" else 1
            setattr(self, f"proj_conv{i}", nn.Conv2d(widths[i], widths[i + 1], 3, stride, 1, bias=False))
            setattr(self, f"proj_bn{i}", nn.BatchNorm2d(widths[i + 1]))
            if i < 3:
                setattr(self, f"proj_lif{i}", neuron())
        f = 2 ** pooling_stat.count("1")
        self.short_conv = nn.Conv2d(in_chans, embed_dim // 8, f, f, bias=False)
        self.short_bn = nn.BatchNorm2d(embed_dim // 8)

    def out_size(self, img_size: int) -> int:
        return stem_out_size(img_size, self.pooling_stat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [T, B, C, H, W]
        s = x
        for i in range(3):
            s = conv_bn_fire(getattr(self, f"proj_conv{i}"), getattr(self, f"proj_bn{i}"),
                             getattr(self, f"proj_lif{i}"), s)
        s = seq(lambda z: self.proj_bn3(self.proj_conv3(z)), s)
        p = seq(lambda z: self.short_bn(self.short_conv(z)), x)
        if p.shape[-2:] != s.shape[-2:]:
            raise ConfigError(f"IPSPS: the short path gives a {tuple(p.shape[-2:])} map, the main path "
                             f"{tuple(s.shape[-2:])}; expected an input size divisible by "
                             f"{self.short_conv.stride[0]}, got {tuple(x.shape[-2:])}")
        return torch.cat([s, p], dim=2)
