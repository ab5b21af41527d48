"""Microseconds per call of the C kernels (LIF / ternary forward and backward, training BatchNorm
forward and backward, BatchNorm + LIF forward, max pooling) on the tensor shapes of the
benchmark models (sdt_8_384, qkformer_10_384 at 32x32), with the achieved memory traffic, to see which kernel is bound by what; rows marked
``torch`` time PyTorch's own operator on the same tensor for comparison.

    python benchmarks/kernel_micro.py [--threads 2] [--dtype bf16|fp32] [--calls 40]

Shapes: [T=4, B=16, C, H, W] activations of sdt_8_384 / qkformer_10_384 at 32x32 input
(channels-last, as ``spikeformers.accel.optimize`` lays them out). Median of ``--calls`` calls after 5 warm-up
calls. GB/s counts each tensor the kernel must read or write once.
"""

from __future__ import annotations

import argparse

import torch

from spikeformers.analysis.bench import median_time

SHAPES = [(4, 16, 48, 32, 32), (4, 16, 96, 16, 16), (4, 16, 384, 4, 4), (4, 16, 384, 2, 2), (4, 16, 1536, 2, 2)]


def median_us(fn, calls: int) -> float:
    return median_time(fn, warmup=5, reps=calls) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--calls", type=int, default=40)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from spikeformers import kernels
    from spikeformers.neurons import LIF, Ternary

    if not kernels.available():
        raise SystemExit(f"the C kernels are not available: {kernels.status()}")
    dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    size = torch.finfo(dt).bits // 8
    lif, tern = LIF(tau=2.0, v_reset=0.0, detach_reset=True), Ternary()
    print(f"{kernels.status()}; {torch.get_num_threads()} threads, {a.dtype}")
    print(f"{'kernel':18s} {'shape':22s} {'us':>8s} {'GB/s':>7s}")
    for shape in SHAPES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g).to(dt)
        gy = torch.randn(shape, generator=g).to(dt)
        n = x.numel() * size
        _, hs = kernels.lif_forward(lif, x, True)
        _, us = kernels.ternary_forward(tern, x, True)
        x4 = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        gy4 = gy.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        w, b = torch.ones(shape[2]), torch.zeros(shape[2])
        _, mean, _, rstd = kernels.batchnorm_forward(x4, w, b, 1e-5)
        rows = [
            ("lif_forward", lambda: kernels.lif_forward(lif, x, True), 3),        # x in; s, h out
            ("lif_backward", lambda: kernels.lif_backward(lif, gy, hs, 0.5, 0.5), 3),
            ("ternary_forward", lambda: kernels.ternary_forward(tern, x, True), 3),
            ("ternary_backward", lambda: kernels.ternary_backward(tern, gy, us), 3),
            ("bn_forward", lambda: kernels.batchnorm_forward(x4, w, b, 1e-5), 3),  # x twice, y
            ("bn_backward", lambda: kernels.batchnorm_backward(gy4, x4, w, mean, rstd), 5),
        ]
        y4, _, _, _ = kernels.batchnorm_forward(x4, w, b, 1e-5)

        def bn_then_lif():
            y, *_ = kernels.batchnorm_forward(x4, w, b, 1e-5)
            kernels.lif_forward(lif, y.view(shape), True)

        def pool_fb(fast):
            xs = (x4 > 0).to(dt).requires_grad_()
            if fast:
                y, arg = kernels.maxpool_forward(xs, 3, 2, 1, True)
                kernels.maxpool_backward(torch.ones_like(y), arg, xs.shape, xs.dtype, 3, 2, 1)
            else:
                torch.nn.functional.max_pool2d(xs, 3, 2, 1).backward(torch.ones(y4.shape[0], shape[2], *(
                    (s + 1) // 2 for s in shape[3:])).to(dt).contiguous(memory_format=torch.channels_last))
        rows += [
            ("bn+lif_forward", bn_then_lif, 6),
            ("bnlif_forward", lambda: kernels.bnlif_forward(x4, w, b, 1e-5, lif, shape[0], keep_h=True), 4),
            ("maxpool_fwd+bwd", lambda: pool_fb(True), 2),
            ("torch maxpool f+b", lambda: pool_fb(False), 2),
        ]
        for name, fn, passes in rows:
            us_ = median_us(fn, a.calls)
            print(f"{name:18s} {str(list(shape)):22s} {us_:8.0f} {passes * n / us_ / 1e3:7.1f}")


if __name__ == "__main__":
    main()
