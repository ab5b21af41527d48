"""spikeformers vs SpikingJelly 2.0.0 on the same three models, in the same run, A B A B.

    python benchmarks/compare_spikingjelly.py [--models sdt_8_384,...] [--rounds 2] [--threads 2]
                                              [--reps 5] [--sj-compile] [--ours-compile] [--json out.json]

SpikingJelly is installed with ``pip install --no-deps spikingjelly==2.0.0`` (plus ``loguru`` and
``h5py``, which its imports need, also ``--no-deps``) into a separate
virtual environment that this script creates (``benchmarks/.sj-venv`` by default); that venv sees
this interpreter's packages (torch, numpy) through a ``.pth`` file, so both sides run the same
torch build. The main environment is never modified.

Workloads: T = 4, batch 16, 32x32x3 input, 10 classes. Each round runs, in separate
processes, ours (default fastest settings of ``spikeformers bench``) then SpikingJelly's
(fp32, its ``torch`` backend on CPU, eager and, with ``--sj-compile``, ``torch.compile``), so
machine-load drift hits both sides alike. The train step is the same on both sides: forward,
cross-entropy, backward, SGD(momentum 0.9) step (plus ``functional.reset_net`` for SpikingJelly,
whose neurons keep state). Reported: medians over rounds, and ours / theirs ratios against
SpikingJelly's faster (compiled, when measured) figure. Ours' inference is timed with int8
products (the bench default on an x86 CPU; weights rounded per channel, spikes exact) and, in the
same bench call, with float (bf16 / fp32) products: both ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import site
import statistics
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ours -> SpikingJelly factory and constructor kwargs for 32x32x3 input, 10 classes, T = 4.
SJ_MODELS = {
    "spikformer_4_384_cifar": ("spikingjelly.activation_based.model.spikformer", "spikformer_cifar10",
                               dict(T=4, num_classes=10)),
    "sdt_8_384": ("spikingjelly.activation_based.model.spike_driven_transformer", "sdt_8_384",
                  dict(T=4, in_channels=3, num_classes=10)),
    "qkformer_10_384": ("spikingjelly.activation_based.model.qkformer", "qkformer_10_384",
                        dict(T=4, in_channels=3, num_classes=10)),
}


def build_sj_model(name: str):
    """SpikingJelly's counterpart of ``name`` (SJ_MODELS), in multi-step mode; needs SpikingJelly."""
    import importlib

    from spikingjelly.activation_based import functional
    module, factory, kwargs = SJ_MODELS[name]
    model = getattr(importlib.import_module(module), factory)(**kwargs)
    functional.set_step_mode(model, "m")
    return model


def sj_steps(model, x, y, compiled: bool = False):
    """``(train, infer)``: SpikingJelly's train step (reset the neurons' state, forward, cross-entropy,
    backward, SGD with momentum 0.9) and inference step on ``model``, through ``torch.compile`` when
    ``compiled``. The caller sets ``model.train()`` / ``model.eval()``."""
    import torch
    import torch.nn.functional as F
    from spikingjelly.activation_based import functional
    net = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train():
        functional.reset_net(model)
        out = net(x)
        if out.dim() == 3:   # spikformer_cifar10 returns per-step logits [T, N, K]
            out = out.mean(0)
        F.cross_entropy(out, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer():
        functional.reset_net(model)
        with torch.inference_mode():
            net(x)

    return train, infer


WORKER = r'''
import json, sys
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["bench_dir"])
import torch
from compare_spikingjelly import build_sj_model, sj_steps
from spikeformers.analysis.bench import median_time as timed
torch.set_num_threads(cfg["threads"]); torch.manual_seed(0)
model = build_sj_model(cfg["model"])
x = torch.randn(16, 3, 32, 32); y = torch.randint(0, 10, (16,))
out = {}
for compiled in ([False, True] if cfg["compile"] else [False]):
    train, infer = sj_steps(model, x, y, compiled)
    model.train(); tr = timed(train, cfg["warmup"] + 2 * compiled, cfg["reps"])
    model.eval(); inf = timed(infer, cfg["warmup"] + 2 * compiled, cfg["reps"])
    out["compiled" if compiled else "eager"] = {"train_img_s": 16 / tr, "infer_img_s": 16 / inf}
print("RESULT " + json.dumps(out))
'''


def ensure_sj_venv(path: Path) -> Path:
    """A venv with spikingjelly==2.0.0 (no dependencies) that also sees this interpreter's packages."""
    py = path / "bin" / "python"
    if not py.exists():
        print(f"creating {path} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(path)
    sp = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                        text=True, check=True).stdout.strip()
    Path(sp, "_spikeformers_parent.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    if subprocess.run([str(py), "-c", "import spikingjelly"], capture_output=True).returncode != 0:
        # --no-deps: its declared dependencies would pull a CUDA torch. Its import chain also needs
        # loguru and h5py, installed alone (also --no-deps; numpy comes from the parent env).
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "spikingjelly==2.0.0", "loguru", "h5py"],
                       check=True)
    return py


def run_ours(model: str, threads: int, reps: int, compile_: bool = False) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "spikeformers", "bench", "--model", model, "--T", "4",
                        "--batch", "16", "--img-size", "32", "--num-classes", "10", "--threads", str(threads),
                        "--reps", str(reps), "--json"] + (["--compile"] if compile_ else []),
                       capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"spikeformers bench failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_sj(py: Path, model: str, threads: int, reps: int, compile_: bool) -> dict:
    cfg = dict(model=model, bench_dir=str(ROOT / "benchmarks"), threads=threads, reps=reps, warmup=2,
               compile=compile_)
    r = subprocess.run([str(py), "-c", WORKER, json.dumps(cfg)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"SpikingJelly worker failed for {model}:\n{r.stderr[-3000:]}")
    return json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(SJ_MODELS))
    ap.add_argument("--rounds", type=int, default=2, help="A B rounds (A B A B = 2)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sj-compile", action="store_true", help="also time torch.compile'd SpikingJelly")
    ap.add_argument("--ours-compile", action="store_true",
                    help="run ours with `spikeformers bench --compile` (torch.compile; minutes of compiling)")
    ap.add_argument("--venv", default=str(ROOT / "benchmarks" / ".sj-venv"))
    ap.add_argument("--json", default=None, help="write all measurements here")
    a = ap.parse_args()
    py = ensure_sj_venv(Path(a.venv))
    models = [m for m in a.models.split(",") if m]
    for m in models:
        if m not in SJ_MODELS:
            raise SystemExit(f"no SpikingJelly counterpart for {m!r}; expected some of {sorted(SJ_MODELS)}")
    raw = {m: {"ours": [], "sj": []} for m in models}
    for rnd in range(a.rounds):
        for m in models:
            print(f"round {rnd + 1}/{a.rounds} {m}: ours ...", end="", flush=True)
            raw[m]["ours"].append(run_ours(m, a.threads, a.reps, a.ours_compile))
            print(" SpikingJelly ...", end="", flush=True)
            raw[m]["sj"].append(run_sj(py, m, a.threads, a.reps, a.sj_compile))
            print(" done", flush=True)
    med = statistics.median
    cpu = raw[models[0]]["ours"][0].get("cpu", "") if models else ""
    print(f"\nT=4, batch 16, 32x32x3, 10 classes, {a.threads} threads, medians of {a.rounds} A/B rounds "
          f"(each {a.reps} timed steps); ours {'compiled' if a.ours_compile else 'eager'}"
          f"{'; ' + cpu if cpu else ''}")
    hdr = ("model", "ours train", "SJ eager", "SJ compiled", "ratio", "ours infer", "SJ eager", "SJ compiled", "ratio",
           "ours infer, float products", "ratio")
    print("| " + " | ".join(hdr) + " |\n|" + "---|" * len(hdr))
    summary = {}
    for m in models:
        o_tr = med(r["train_img_s"] for r in raw[m]["ours"])
        o_in = med(r["infer_img_s"] for r in raw[m]["ours"])
        o_fl = med(r.get("infer_float_img_s", float("nan")) for r in raw[m]["ours"])   # NaN without int8
        e_tr = med(r["eager"]["train_img_s"] for r in raw[m]["sj"])
        e_in = med(r["eager"]["infer_img_s"] for r in raw[m]["sj"])
        c_tr = med(r["compiled"]["train_img_s"] for r in raw[m]["sj"]) if a.sj_compile else float("nan")
        c_in = med(r["compiled"]["infer_img_s"] for r in raw[m]["sj"]) if a.sj_compile else float("nan")
        best_tr = max(e_tr, c_tr) if a.sj_compile else e_tr
        best_in = max(e_in, c_in) if a.sj_compile else e_in
        summary[m] = dict(ours_train=o_tr, ours_infer=o_in, sj_eager_train=e_tr, sj_eager_infer=e_in,
                          sj_compiled_train=c_tr, sj_compiled_infer=c_in, train_ratio=o_tr / best_tr,
                          infer_ratio=o_in / best_in, ours_infer_float=o_fl, infer_float_ratio=o_fl / best_in)
        print(f"| {m} | {o_tr:.1f} | {e_tr:.1f} | {c_tr:.1f} | {o_tr / best_tr:.2f}x | {o_in:.1f} | {e_in:.1f} "
              f"| {c_in:.1f} | {o_in / best_in:.2f}x | {o_fl:.1f} | {o_fl / best_in:.2f}x |")
    print("ratios are against SpikingJelly's faster figure" + (" (compiled or eager)" if a.sj_compile else
                                                                " (eager only: pass --sj-compile)"))
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "summary": summary, "raw": raw}, indent=2))


if __name__ == "__main__":
    main()
