"""Where a train step's (or inference's) GPU time goes, by kernel category, on a CUDA GPU.

    python benchmarks/profile_gpu.py [--workloads sdt_8_768:224:32:1000,spikformer_4_384_cifar:32:64:10]
                                     [--infer] [--steps 3] [--top 12] [--precision auto|fp32|bf16]
    benchmarks/.sj-venv/bin/python benchmarks/profile_gpu.py --spikingjelly [--precision fp32|bf16|bf16-neuron] ...

A workload is ``model:img_size:batch:num_classes`` (T = 4). Ours runs the step ``spikeformers bench``
times, with its defaults (``optimize``; ``auto`` precision, bf16 on a GPU that has it; SGD with
momentum 0.9, torch's fused kernel; inference in eval mode with BatchNorm folded and, in bf16, bf16
weights). ``--spikingjelly`` profiles SpikingJelly 2.0.0's model of the same name with the step of
``compare_spikingjelly.py`` (run it with the interpreter of the environment that script creates).

Per workload: the step's median wall time unprofiled (after 3 warm-up steps), then ``--steps``
steps under ``torch.profiler``: the GPU time of every kernel, memory copy and memset (the profiler's
trace), summed by category from the kernel's name. ``busy`` is GPU kernel time over wall time: far
below 100 % means the GPU waits for the CPU to launch work (launch overhead); ``kernels`` counts
launches per step. Categories: ``matmul/conv`` (cuBLAS, cuDNN, CUTLASS products),
``neurons`` (the Triton neuron kernels, ours and SpikingJelly's), ``batchnorm``, ``copy/layout``
(copies, dtype casts, layout changes, fills, concatenation), ``elementwise`` (PyTorch's pointwise
kernels), ``reduction``, ``pooling``, ``optimizer``, ``loss``, ``other``; ``--top`` lists the
largest kernels so that a name sorted into the wrong category is seen.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Checked in this order: the first category with a key in the kernel's name wins. Products come
# first (cuDNN / CUTLASS product names also mention nchw / nhwc layouts), then the named layers
# (BatchNorm before the neurons: PyTorch's batch_norm_backward_kernel), then copies (PyTorch's copy
# and cast kernels are elementwise kernels with "copy" in the name).
CATS = [
    ("matmul/conv", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "splitkreduce", "sm90_", "sm80_", "wgmma")),
    ("batchnorm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw", "welford")),
    ("loss", ("softmax", "nll_loss", "cross_entropy", "log_softmax")),
    ("pooling", ("pool",)),
    ("neurons", ("_lif_fwd", "_lif_bwd", "_ternary_fwd", "_ternary_bwd", "multistep_lif", "_forward_kernel",
                 "_backward_kernel", "lif_", "neuron")),
    ("optimizer", ("multi_tensor", "sgd", "momentum")),
    ("copy/layout", ("copy", "memcpy", "memset", "nchwtonhwc", "nhwctonchw", "transpose", "catarray", "cat_", "fill",
                     "convert", "permute")),
    ("matmul/conv", ("conv", "cudnn", "dgrad", "wgrad", "fprop", "implicit")),
    ("reduction", ("reduce",)),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "triton_")),
]


def category(name: str) -> str:
    n = name.lower()
    for cat, keys in CATS:
        if any(k in n for k in keys):
            return cat
    return "other"


def kernel_times(prof) -> list[tuple[str, float]]:
    """``(name, microseconds)`` of every GPU kernel, memcpy and memset in ``prof``'s trace."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    out = [(e["name"], float(e.get("dur", 0))) for e in events
           if isinstance(e, dict) and str(e.get("cat", "")).lower() in ("kernel", "gpu_memcpy", "gpu_memset")]
    if not out:   # another trace format: the kernel rows of the profiler's own table
        from torch.autograd import DeviceType
        out = [(ev.key, ev.self_device_time_total / max(ev.count, 1)) for ev in prof.key_averages()
               for _ in range(ev.count) if ev.device_type == DeviceType.CUDA]
    return out


def our_step(model_name, img, batch, classes, precision, infer):
    from spikeformers.accel import fuse, optimize
    from spikeformers.engine.hardware import resolve_precision
    from spikeformers.engine.optim import build_optimizer
    from spikeformers.models import create_model
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(precision, dev)
    model = create_model(model_name, T=4, img_size=img, num_classes=classes).to(dev)
    optimize(model)
    x = torch.randn(batch, model.in_chans, img, img, device=dev)
    y = torch.randint(0, classes, (batch,), device=dev)

    def ac():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    if infer:
        model = copy.deepcopy(model).eval()
        fuse(model)
        if precision == "bf16":
            model.to(torch.bfloat16)

        def step():
            with torch.inference_mode(), ac():
                model(x)
        return step, f"ours, {precision}"
    opt = build_optimizer("sgd", list(model.parameters()), lr=0.01)
    model.train()

    def step():
        with ac():
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, f"ours, {precision}"


def sj_step(model_name, img, batch, classes, precision, infer):
    from compare_spikingjelly import SJ_MODELS, build_sj_model, sj_steps
    if model_name not in SJ_MODELS:
        raise SystemExit(f"--spikingjelly knows {', '.join(SJ_MODELS)}; got {model_name!r}")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = "fp32" if precision == "auto" else precision
    model = build_sj_model(model_name, classes).to(dev)
    x = torch.randn(batch, 3, img, img, device=dev)
    y = torch.randint(0, classes, (batch,), device=dev)
    train, inf = sj_steps(model, x, y, False, precision)
    model.train(not infer)
    return (inf if infer else train), f"SpikingJelly 2.0.0, {precision}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="sdt_8_768:224:32:1000,spikformer_4_384_cifar:32:64:10")
    ap.add_argument("--infer", action="store_true", help="profile inference instead of the train step")
    ap.add_argument("--both", action="store_true", help="profile the train step and inference")
    ap.add_argument("--precision", default="auto", help="ours: auto, fp32 or bf16; SpikingJelly: fp32, bf16, bf16-neuron")
    ap.add_argument("--steps", type=int, default=3, help="profiled steps")
    ap.add_argument("--reps", type=int, default=10, help="unprofiled timed steps (median)")
    ap.add_argument("--top", type=int, default=12, help="list the N kernels with the most GPU time")
    ap.add_argument("--spikingjelly", action="store_true", help="profile SpikingJelly 2.0.0's model instead")
    a = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from spikeformers.analysis.bench import median_time
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        print("no CUDA device: the trace holds no GPU kernels (this run only checks the script)")
    print(f"{torch.cuda.get_device_name() if dev == 'cuda' else 'CPU'}, torch {torch.__version__}")
    for spec in a.workloads.split(","):
        name, img, batch, classes = spec.split(":")
        img, batch, classes = int(img), int(batch), int(classes)
        for infer in ([False, True] if a.both else [a.infer]):
            torch.manual_seed(0)
            step, who = (sj_step if a.spikingjelly else our_step)(name, img, batch, classes, a.precision, infer)
            wall = median_time(step, 3, a.reps, dev)
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
            with profile(activities=acts) as prof:
                for _ in range(a.steps):
                    step()
                if dev == "cuda":
                    torch.cuda.synchronize()
            ks = kernel_times(prof)
            split, count = defaultdict(float), defaultdict(int)
            per_name = defaultdict(float)
            for k, us in ks:
                split[category(k)] += us
                count[category(k)] += 1
                per_name[k] += us
            total = sum(split.values()) / a.steps / 1e3   # ms per step
            what = "inference" if infer else "train step"
            print(f"\n{name}, {img}x{img}, {classes} classes, batch {batch}, {what} ({who}): "
                  f"{wall * 1e3:.1f} ms per step unprofiled, {batch / wall:.0f} img/s; GPU kernels {total:.1f} ms per step "
                  f"({100 * total / (wall * 1e3):.0f} % busy), {len(ks) / a.steps:.0f} kernels per step")
            print("| category | % of GPU time | ms per step | kernels per step |\n|---|---|---|---|")
            for cat, t in sorted(split.items(), key=lambda kv: -kv[1]):
                print(f"| {cat} | {100 * t / max(sum(split.values()), 1e-9):.1f} | {t / a.steps / 1e3:.2f} "
                      f"| {count[cat] / a.steps:.0f} |")
            if a.top and per_name:
                print(f"top {a.top} kernels (ms per step, category):")
                for k, us in sorted(per_name.items(), key=lambda kv: -kv[1])[:a.top]:
                    print(f"  {us / a.steps / 1e3:7.2f}  {category(k):12s} {k[:140]}")
            del step
            if dev == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
