"""``spikeformers bench``: training and inference throughput, peak memory and achieved GFLOP/s of a
zoo model against the machine's measured matmul peaks.

What is timed (the same definition the SpikingJelly comparison in ``benchmarks/`` uses):

- train step: forward on a ``[B, C, H, W]`` batch, cross-entropy, backward, SGD (momentum 0.9)
  step (ours with torch's fused kernel, as ``spikeformers train`` builds it), ``zero_grad``; the
  model in train mode (BatchNorm batch statistics).
- inference: forward in eval mode under ``torch.inference_mode``.

Each is warmed up, then timed ``reps`` times; the median is reported. GFLOP/s counts the
convolution / matmul FLOPs of one step (``torch.utils.flop_counter``, forward + backward for
training) over its median time. Peak memory is the process's peak resident set (``ru_maxrss``) on
CPU, ``torch.cuda.max_memory_allocated`` on GPU.

Default settings are the fastest ones measured on CPU: bf16 autocast, 1x1 convolutions as matmuls
with channels-last tensors (:func:`spikeformers.accel.optimize`), the fused neuron kernel, and for
inference BatchNorm folded into the convolutions (:func:`spikeformers.accel.fuse`) and, in bf16, the
weights stored in bf16 (autocast would cast the same values again at every call).
"""

from __future__ import annotations

import contextlib
import copy
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .. import kernels
from ..accel import fuse as fuse_bn
from ..accel import int8_available, quantize_int8
from ..accel import optimize as optimize_model
from ..engine.hardware import (
    bf16_native,
    device_name,
    matmul_peak,
    resolve_precision,
    synchronize,
)
from ..engine.optim import build_optimizer
from ..errors import ConfigError
from ..models import create_model
from .firing import FiringRateMonitor

__all__ = ["BenchResult", "bench_model", "step_flops", "spike_rate_of", "median_time"]


@dataclass
class BenchResult:
    model: str
    T: int
    batch: int
    img_size: int
    num_classes: int
    precision: str
    compile: bool
    optimize: bool
    fuse: bool
    threads: int
    train_img_s: float
    infer_img_s: float
    peak_mem_mb: float
    gflops_s: float             # achieved in the train step
    infer_gflops_s: float
    peak_fp32_gflops_s: float
    peak_bf16_gflops_s: float
    train_gflop_per_step: float
    infer_gflop_per_step: float
    kernel: str
    cpu: str = ""               # which CPU or GPU produced the figures (engine.hardware.device_name)
    infer_spike_rate: float = float("nan")   # nonzero outputs of the spiking neurons in the timed inference
    int8: bool = False          # inference with int8 products (accel.quantize_int8) where inputs are spikes
    infer_float_img_s: float = float("nan")  # with int8: the same inference with float (bf16/fp32) products
    train_peak_mem_mb: float = float("nan")  # peak memory of the timed train step alone

    def to_dict(self) -> dict:
        return asdict(self)


def _autocast(device: str, precision: str):
    if precision == "bf16":
        return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step_flops(fn) -> float:
    """FLOPs of the convolutions / matmuls ``fn()`` runs (forward and any backward)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def median_time(fn, warmup: int = 2, reps: int = 5, device: str = "cpu") -> float:
    """Median wall seconds of ``fn()`` over ``reps`` calls after ``warmup`` untimed ones (the device
    synchronised around each call): the one timing rule of ``bench`` and of ``benchmarks/``."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        synchronize(device)
        t = time.perf_counter()
        fn()
        synchronize(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _peak_mem_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2 ** 20


def bench_model(name: str, T: int = 4, batch: int = 16, img_size: int = 32, num_classes: int = 10,
                precision: str = "auto", compile: bool = False, optimize: bool = True, fuse: bool = True,
                warmup: int = 2, reps: int = 5, device: str = "cpu", peaks: bool = True,
                train: bool = True, infer: bool = True, seed: int = 0,
                model_kwargs: dict | None = None, int8: bool | None = None) -> BenchResult:
    """Measure ``name`` (a registered model, with ``model_kwargs`` overriding its config) at
    ``[batch, in_chans, img_size, img_size]``; ``precision="auto"`` takes the faster format as
    training does (``engine.hardware.resolve_precision``). ``int8`` (default: on a CPU whose PyTorch has
    oneDNN's int8 operators, unless ``compile``) times inference with :func:`~spikeformers.accel.quantize_int8`
    (int8 weights, exact spike inputs; an approximation like bf16, see ``docs/performance.md``) and also reports
    the same inference with float products as ``infer_float_img_s``. Compiled, the int8 products
    run eagerly between compiled pieces (a graph break each), so ``compile`` defaults to float."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    precision = resolve_precision(precision, torch.device(device))
    if int8 is None:
        int8 = device == "cpu" and int8_available() and not compile
    elif int8 and (device != "cpu" or not int8_available()):
        raise ConfigError(f"int8 inference needs a CPU with PyTorch's oneDNN int8 operators (device {device!r})")
    torch.manual_seed(seed)
    model = create_model(name, **{"T": T, "img_size": img_size, "num_classes": num_classes,
                                  **(model_kwargs or {})}).to(device)
    if optimize:
        optimize_model(model)
    x = torch.randn(batch, model.in_chans, img_size, img_size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    train_s = infer_s = spike_rate = infer_float_s = train_peak = float("nan")
    train_flops = infer_flops = float("nan")

    if train:
        net = torch.compile(model) if compile else model
        opt = build_optimizer("sgd", list(model.parameters()), lr=0.01)   # momentum 0.9, fused where possible

        def train_step():
            with _autocast(device, precision):
                out = net(x)
            F.cross_entropy(out.float(), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        model.train()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        train_s = median_time(train_step, warmup + (2 if compile else 0), reps, device)
        train_peak = _peak_mem_mb(device)     # the timed train step's own peak (GPU; the process's on CPU)
        model.train()
        with _autocast(device, precision):    # the same products as the timed step, in its precision
            train_flops = step_flops(lambda: F.cross_entropy(model(x).float(), y).backward())
        model.zero_grad(set_to_none=True)

    if infer:
        imodel = copy.deepcopy(model).eval()
        if fuse:
            fuse_bn(imodel)
        if int8:                  # int8 weights rounded at the first call, from the (bf16) folded weights
            qmodel = quantize_int8(copy.deepcopy(imodel))
        if precision == "bf16":   # weights cast once, not at every call by autocast (same values)
            imodel.to(torch.bfloat16)
            if int8:
                qmodel.to(torch.bfloat16)

        def infer_time(m: torch.nn.Module) -> float:
            net = torch.compile(m) if compile else m

            def infer_step():
                with torch.inference_mode(), _autocast(device, precision):
                    net(x)

            return median_time(infer_step, warmup + (2 if compile else 0), reps, device)

        infer_s = infer_time(qmodel if int8 else imodel)
        if int8:
            infer_float_s = infer_time(imodel)
        with torch.no_grad(), _autocast(device, precision):
            infer_flops = step_flops(lambda: imodel(x))   # the same products, counted on the float model
            spike_rate = spike_rate_of(imodel, x)

    p32 = matmul_peak(torch.float32, device=device) if peaks else float("nan")
    # bf16 is timed only where it is native: emulated, one 2048^3 product takes about a minute
    p16 = matmul_peak(torch.bfloat16, device=device) if peaks and bf16_native(device) else float("nan")
    return BenchResult(
        model=name, T=T, batch=batch, img_size=img_size, num_classes=num_classes, precision=precision,
        compile=compile, optimize=optimize, fuse=fuse, threads=torch.get_num_threads(),
        train_img_s=batch / train_s, infer_img_s=batch / infer_s, peak_mem_mb=_peak_mem_mb(device),
        gflops_s=train_flops / train_s / 1e9, infer_gflops_s=infer_flops / infer_s / 1e9,
        peak_fp32_gflops_s=p32, peak_bf16_gflops_s=p16, train_gflop_per_step=train_flops / 1e9,
        infer_gflop_per_step=infer_flops / 1e9, kernel=kernels.status(), cpu=device_name(device),
        infer_spike_rate=spike_rate, int8=int8, infer_float_img_s=batch / infer_float_s,
        train_peak_mem_mb=train_peak)


def spike_rate_of(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Fraction of nonzero outputs over every spiking neuron (binary or ternary; not the ReLU "neuron")
    in one forward pass of ``model`` on ``x``. Dense kernels cost the same at any rate, so the figure does
    not change a timing; it says what the timed network did: a benchmark model at random initialisation
    may hardly fire past its stem, where an event-driven kernel would look unrealistically fast."""
    with FiringRateMonitor(model) as mon:
        model(x)
    return mon.rate
