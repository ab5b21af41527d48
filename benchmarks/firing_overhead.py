"""What a FiringRateMonitor costs: the test pass the Trainer watches (Fashion-MNIST test images
through the default model, no gradients) and training steps (the monitor's hooks switch off the
fused BatchNorm+LIF kernel of an optimized model), each timed with and without the monitor,
alternately, ``--reps`` times; the fastest and the median run of each are reported (on shared cores
the fastest is the one least disturbed by other processes).

    python benchmarks/firing_overhead.py --threads 1 --reps 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from spikeformers import FiringRateMonitor, create_model
from spikeformers.accel import optimize
from spikeformers.engine import TrainConfig, evaluate
from spikeformers.engine.hardware import cpu_name
from spikeformers.engine.trainer import data_loaders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="a2os2a_fmnist")
    ap.add_argument("--images", type=int, default=10000, help="test images per timed test pass")
    ap.add_argument("--steps", type=int, default=30, help="training steps per timed run (batch 64)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    train, test, _ = data_loaders(TrainConfig.from_dict(batch_size=64, eval_images=a.images), progress=False)
    model = optimize(create_model(a.model))          # what the Trainer runs (fast layers on)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = []
    for x, y in train:
        batches.append((x, y))
        if len(batches) == a.steps:
            break

    def test_pass(watch: bool) -> float:
        t0 = time.perf_counter()
        if watch:
            with FiringRateMonitor(model):
                evaluate(model, test, progress=False)
        else:
            evaluate(model, test, progress=False)
        return time.perf_counter() - t0

    def train_steps(watch: bool) -> float:
        model.train()
        mon = FiringRateMonitor(model).start() if watch else None
        t0 = time.perf_counter()
        for x, y in batches:
            with torch.autocast("cpu", torch.bfloat16):
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if mon:
            mon.stop()
        return dt

    for name, fn, unit in (("test pass", test_pass, a.images), ("training steps", train_steps, a.steps)):
        fn(False)                                    # warm-up
        off, on = [], []
        for _ in range(a.reps):
            off.append(fn(False))
            on.append(fn(True))
        what = "images" if unit == a.images else "steps of batch 64 (bf16 autocast)"
        for stat, f in (("fastest", min), ("median", statistics.median)):
            m_off, m_on = f(off), f(on)
            print(f"{name}, {unit} {what}, {stat}: {m_off:.3f} s without, {m_on:.3f} s with the monitor "
                  f"({100 * (m_on / m_off - 1):+.1f} %)")
    print(f"{a.model}, {torch.get_num_threads()} threads, {cpu_name()}")


if __name__ == "__main__":
    main()
