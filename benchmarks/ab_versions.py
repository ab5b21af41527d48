"""Two versions of spikeformers on the same workloads, in one run, A B A B: is a change within noise?

    git worktree add /tmp/base <REV>
    python benchmarks/ab_versions.py --a /tmp/base --b . [--models sdt_8_384,...] [--rounds 3] \\
        [--threads 2] [--json out.json]

Each round runs ``spikeformers bench --json`` (its default settings: bf16 autocast where the CPU has
it natively, fast layers, BatchNorm folded, int8 inference products on x86) for every model, once
from each source tree, in separate processes (``PYTHONPATH`` set to the tree), alternating which goes
first, so that drift of the machine's load hits both alike. Reported: the median train and inference
images per second of each side over the rounds, and B / A.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

MODELS = ("spikformer_4_384_cifar", "sdt_8_384", "qkformer_10_384")


def run_bench(tree: Path, model: str, threads: int, reps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    cmd = [sys.executable, "-m", "spikeformers", "bench", "--model", model, "--json", "--reps", str(reps),
           "--threads", str(threads)]
    p = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{tree}: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, type=Path, help="source tree A (e.g. a git worktree of the base revision)")
    ap.add_argument("--b", default=Path("."), type=Path, help="source tree B (default: this checkout)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None, help="write every measurement to this file")
    a = ap.parse_args()
    models = [m for m in a.models.split(",") if m]
    runs = {(side, m): [] for side in "ab" for m in models}
    for r in range(a.rounds):
        for m in models:
            for side in ("ab" if r % 2 == 0 else "ba"):
                res = run_bench(a.a if side == "a" else a.b, m, a.threads, a.reps)
                runs[side, m].append(res)
                print(f"round {r + 1} {side.upper()} {m}: train {res['train_img_s']:.1f} img/s, "
                      f"inference {res['infer_img_s']:.1f} img/s", flush=True)
    cpu = runs["a", models[0]][0].get("cpu", "")
    print(f"\nmedians of {a.rounds} A/B rounds, {a.threads} threads, {cpu}; A = {a.a}, B = {a.b}")
    print(f"{'model':26s} {'train A':>9s} {'train B':>9s} {'B/A':>6s}   {'infer A':>9s} {'infer B':>9s} {'B/A':>6s}")
    summary = {}
    for m in models:
        med = {(s, k): statistics.median(x[k] for x in runs[s, m]) for s in "ab" for k in ("train_img_s", "infer_img_s")}
        summary[m] = {f"{k}_{s}": v for (s, k), v in med.items()}
        print(f"{m:26s} {med['a', 'train_img_s']:9.1f} {med['b', 'train_img_s']:9.1f} "
              f"{med['b', 'train_img_s'] / med['a', 'train_img_s']:6.3f}   {med['a', 'infer_img_s']:9.1f} "
              f"{med['b', 'infer_img_s']:9.1f} {med['b', 'infer_img_s'] / med['a', 'infer_img_s']:6.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"cpu": cpu, "threads": a.threads, "rounds": a.rounds,
                                            "summary": summary,
                                            "runs": {f"{s}:{m}": v for (s, m), v in runs.items()}}, indent=2))


if __name__ == "__main__":
    main()
