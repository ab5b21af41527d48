"""Train-step throughput of ``a2os2a_fmnist`` variants on random 28x28x1 batches, as the trainer
runs them (``spikeformers.accel.optimize`` layers, bf16 autocast by default, AdamW), in images per second.

    python benchmarks/fmnist_step.py [--batch 64] [--precision bf16|fp32] [--threads 2] \\
        [--variants '{"default": {}, "ipsps_T4": {"stem": "ipsps", "T": 4}}']
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

VARIANTS = {"default": {}, "ipsps_T4": {"stem": "ipsps", "T": 4}, "ipsps_D192": {"stem": "ipsps", "embed_dim": 192},
            "ipsps_D256": {"stem": "ipsps", "embed_dim": 256}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--variants", default=None, help="JSON {name: model kwargs}")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from spikeformers.accel import keep_freed_memory, optimize
    from spikeformers.analysis.bench import median_time
    from spikeformers.models import create_model
    keep_freed_memory()   # as the CLI does
    for name, kw in (json.loads(a.variants) if a.variants else VARIANTS).items():
        torch.manual_seed(0)
        m = optimize(create_model("a2os2a_fmnist", **kw)).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        x, y = torch.randn(a.batch, 1, 28, 28), torch.randint(0, 10, (a.batch,))

        def step():
            with torch.autocast("cpu", torch.bfloat16, enabled=a.precision == "bf16"):
                out = m(x)
            F.cross_entropy(out.float(), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        dt = median_time(step, warmup=3, reps=a.steps)
        print(f"{name:12s} {json.dumps(kw):45s} {a.batch / dt:7.0f} img/s  "
              f"({sum(p.numel() for p in m.parameters()) / 1e6:.2f} M params)", flush=True)


if __name__ == "__main__":
    main()
