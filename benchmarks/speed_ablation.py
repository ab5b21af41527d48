"""What one speed path of ``spikeformers.accel.optimize`` is worth inside a whole train step: the same model in
one process, the path switched on and off between interleaved steps (so machine drift hits both
alike), median step time of each.

    python benchmarks/speed_ablation.py --model sdt_8_384 --path bn_fire [--rounds 10] [--threads 2]

Paths: ``bn_fire`` (BatchNorm + LIF forward in one C kernel, off = the two kernels in turn),
``small_map`` (3x3 convs on <= 2x2 maps as one matrix product, off = oneDNN's convolution),
``maxpool`` (C max pooling, off = PyTorch's), ``token_mean`` (the head's token mean with its gradient in the input's layout,
``spikeformers.nn.layers.token_mean``; off = flatten + mean). Workload as ``spikeformers bench``: T = 4, batch 16,
32x32x3, 10 classes, bf16 autocast, SGD(momentum 0.9); inference = eval mode, no BN folding.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch import nn

PATHS = ("bn_fire", "small_map", "maxpool", "token_mean")


def switch(model: nn.Module, path: str):
    """A function on(flag) that switches ``path`` on or off in ``model``."""
    from spikeformers import kernels
    from spikeformers.accel import SmallMapConv2d
    from spikeformers.nn.fused import FastMaxPool2d

    if path == "bn_fire":
        real = kernels.bnlif_supports

        def on(flag: bool) -> None:
            kernels.bnlif_supports = real if flag else (lambda *a, **k: False)
        return on
    if path == "token_mean":
        from spikeformers.nn import layers
        mean = layers._TokenMean.apply

        def on(flag: bool) -> None:
            layers._TokenMean.apply = mean if flag else (lambda x, k: x.flatten(-k).mean(-1))
        return on
    fast, plain = (SmallMapConv2d, nn.Conv2d) if path == "small_map" else (FastMaxPool2d, nn.MaxPool2d)
    mods = [m for m in model.modules() if type(m) is fast]
    if not mods:
        raise SystemExit(f"{path}: the optimized model has no {fast.__name__}")

    def on(flag: bool) -> None:
        for m in mods:
            m.__class__ = fast if flag else plain
    return on


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sdt_8_384")
    ap.add_argument("--path", required=True, choices=PATHS)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from spikeformers.accel import keep_freed_memory, optimize
    from spikeformers.analysis.bench import median_time
    from spikeformers.models import create_model

    keep_freed_memory()
    torch.manual_seed(0)
    model = optimize(create_model(a.model, T=4, img_size=32, num_classes=10))
    on = switch(model, a.path)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    ac = torch.autocast("cpu", dtype=torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train() -> None:
        with ac:
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), ac:
            model(x)
        model.train()

    for _ in range(3):
        train()
    times = {(flag, kind): [] for flag in (True, False) for kind in ("train", "infer")}
    for r in range(a.rounds):
        for flag in ((True, False) if r % 2 else (False, True)):
            on(flag)
            for kind, fn in (("train", train), ("infer", infer)):
                times[flag, kind].append(median_time(fn, warmup=1, reps=2))
    on(True)
    print(f"{a.model}, {a.path}, {torch.get_num_threads()} threads, median of {a.rounds} interleaved rounds (ms):")
    for kind in ("train", "infer"):
        t_on, t_off = (statistics.median(times[f, kind]) * 1e3 for f in (True, False))
        print(f"  {kind:5s} on {t_on:7.1f}  off {t_off:7.1f}  ({100 * (t_off - t_on) / t_off:+.1f} % time saved)")


if __name__ == "__main__":
    main()
