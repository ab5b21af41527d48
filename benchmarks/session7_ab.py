"""Interleaved A/B of two session-7 speed changes inside whole train steps (bf16 autocast, 2 threads
by default), the source of the README's figures for them:

    python benchmarks/session7_ab.py relu  [--dim 256] [--steps 40]   # ReLUNeuron layout fix vs torch.relu
    python benchmarks/session7_ab.py adamw [--steps 30]               # fused vs per-tensor AdamW (default model)
    python benchmarks/session7_ab.py sgd   [--steps 16]               # fused vs per-tensor SGD (sdt_8_384)

Both variants run alternately in one process on the same model and batch; medians after 3 steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["relu", "adamw", "sgd"])
    ap.add_argument("--dim", type=int, default=None, help="embed_dim of a2os2a_fmnist (relu / adamw)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from spikeformers import neurons, speed
    from spikeformers.models import create_model
    speed.keep_freed_memory()
    torch.manual_seed(0)
    if a.what == "sgd":
        m = speed.optimize(create_model("sdt_8_384", T=4, img_size=32, num_classes=10)).train()
        x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    else:
        m = speed.optimize(create_model("a2os2a_fmnist", **({"embed_dim": a.dim} if a.dim else {}))).train()
        x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    new_relu = neurons.ReLUNeuron.forward
    if a.what == "relu":
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True)
        variants = {"torch.relu": (lambda self, z: torch.relu(z), opt), "layout-matched": (new_relu, opt)}
    else:
        cls = torch.optim.SGD if a.what == "sgd" else torch.optim.AdamW
        kw = {"lr": 0.01, "momentum": 0.9} if a.what == "sgd" else {"lr": 1e-3}
        variants = {f"{a.what} loop": (new_relu, cls(m.parameters(), fused=False, **kw)),
                    f"{a.what} fused": (new_relu, cls(m.parameters(), fused=True, **kw))}
    step_t = {k: [] for k in variants}
    opt_t = {k: [] for k in variants}
    for i in range(a.steps + 3):
        for name, (fwd, opt) in variants.items():
            neurons.ReLUNeuron.forward = fwd
            t0 = time.perf_counter()
            with torch.autocast("cpu", torch.bfloat16):
                out = m(x)
            F.cross_entropy(out.float(), y).backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            if i >= 3:
                step_t[name].append(time.perf_counter() - t0)
                opt_t[name].append(t2 - t1)
    neurons.ReLUNeuron.forward = new_relu
    for name in variants:
        print(f"{name:16s} step {1e3 * statistics.median(step_t[name]):7.1f} ms   "
              f"optimizer step {1e3 * statistics.median(opt_t[name]):6.2f} ms")


if __name__ == "__main__":
    main()
