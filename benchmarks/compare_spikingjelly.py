"""spikeformers vs SpikingJelly 2.0.0 on the same models, in the same run, A B A B, on a CPU or a CUDA GPU.

    python benchmarks/compare_spikingjelly.py [--device cpu|cuda] [--workloads cpu|gpu] [--models sdt_8_384,...]
                                              [--batch N] [--img-size S] [--num-classes K] [--rounds 2]
                                              [--threads 2] [--reps 5] [--sj-settings fp32,bf16,...]
                                              [--sj-compile] [--ours-compile] [--ours-fp32 MODELS]
                                              [--wheels DIR] [--deadline SECONDS] [--json out.json] [--md out.md]

SpikingJelly is installed with ``pip install --no-deps spikingjelly==2.0.0`` (plus ``loguru`` and
``h5py``, which its imports need, also ``--no-deps``) into a separate virtual environment that this
script creates (``benchmarks/.sj-venv`` by default); that venv sees this interpreter's packages
(torch, numpy) through a ``.pth`` file, so both sides run the same torch build. The main environment
is never modified. With ``--wheels DIR`` the install reads wheel files from ``DIR`` alone
(``pip --no-index --find-links DIR``), for a machine without network access; fill it beforehand with
``pip download --no-deps spikingjelly==2.0.0 loguru h5py -d DIR`` (for another Python version add
``--only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64``).

Workloads (T = 4 everywhere). ``--workloads cpu`` (the default on a CPU): spikformer_4_384_cifar,
sdt_8_384 and qkformer_10_384 at batch 16, 32x32x3, 10 classes. ``--workloads gpu`` (the default on
CUDA): the same three at batch 64, and sdt_8_768 and qkformer_10_768 at 224x224x3, 1000 classes,
batch 32. ``--models`` keeps only the named models (a model outside the preset is added at 32x32,
10 classes); ``--batch``, ``--img-size`` and ``--num-classes`` override every selected workload.

SpikingJelly's counterparts (parameter counts agree within 0.02 %): ``spikformer_cifar10``,
``sdt_8_384``, ``qkformer_10_384``; for the 224x224 models, which have no factory there, its
``SpikeDrivenTransformer(embed_dims=768, num_heads=8, depths=8)`` (66.34 M parameters, the paper's
figure) and ``QKFormer(embed_dims=768, num_heads=(12, 12, 12), depths=(1, 2, 7))`` (64.96 M).

Each round runs, in separate processes, ours (``spikeformers bench`` with its defaults on that
device) then SpikingJelly's, every workload in turn, so load drift hits both sides alike. The train
step is the same on both sides: forward, cross-entropy, backward, SGD (momentum 0.9) step (plus
``functional.reset_net`` for SpikingJelly, whose neurons keep state); inference is a forward pass in
eval mode under ``torch.inference_mode``. SpikingJelly's settings (``--sj-settings``): ``fp32``
(eager; on CUDA it picks its own neuron kernels, Triton where its native CUDA build is absent, as
from the wheel), ``fp32+compile`` (``torch.compile``; added by ``--sj-compile``), ``bf16`` (plain
``torch.autocast``: its neurons then keep bf16 state and fall back to the PyTorch reference loop)
and ``bf16-neuron`` (its own mixed-precision API, ``prepare_model_for_precision`` with
``mode="bf16", neuron_storage="bf16"``: autocast plus its Triton neurons with bf16 storage and
float32 arithmetic; CUDA only). Defaults: ``fp32`` on a CPU, ``fp32,bf16,bf16-neuron`` on CUDA.
Ratios are ours / SpikingJelly's best (fastest) measured setting. Reported: medians over rounds.

On CUDA the table adds peak memory (``torch.cuda.max_memory_allocated``; ours: what ``bench``
reports, SpikingJelly: the peak of its timed train step) and ours' achieved FLOP/s (torch's FLOP
counter, convolutions and matmuls, over the median step time) as a share of the bf16 matmul peak
measured at the start of the run (an 8192^3 product on random data, CUDA events, median of 10 after
3 warm-ups). On a CPU, ours' inference is timed with int8 products (the bench default on an x86 CPU)
and, in the same bench call, with float products: both ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import site
import statistics
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SDT = "spikingjelly.activation_based.model.spike_driven_transformer"
QKF = "spikingjelly.activation_based.model.qkformer"
# ours -> SpikingJelly module, factory (or class) and constructor kwargs (num_classes is added at build time).
SJ_MODELS = {
    "spikformer_4_384_cifar": ("spikingjelly.activation_based.model.spikformer", "spikformer_cifar10", {"T": 4}),
    "sdt_8_384": (SDT, "sdt_8_384", {"T": 4, "in_channels": 3}),
    "qkformer_10_384": (QKF, "qkformer_10_384", {"T": 4, "in_channels": 3}),
    "sdt_8_768": (SDT, "SpikeDrivenTransformer", {"T": 4, "in_channels": 3, "embed_dims": 768, "num_heads": 8, "depths": 8}),
    "qkformer_10_768": (QKF, "QKFormer", {"T": 4, "in_channels": 3, "embed_dims": 768, "num_heads": (12, 12, 12),
                                              "depths": (1, 2, 7)}),
}
# (model, img_size, batch, num_classes)
WORKLOADS = {
    "cpu": [("spikformer_4_384_cifar", 32, 16, 10), ("sdt_8_384", 32, 16, 10), ("qkformer_10_384", 32, 16, 10)],
    "gpu": [("spikformer_4_384_cifar", 32, 64, 10), ("sdt_8_384", 32, 64, 10), ("qkformer_10_384", 32, 64, 10),
            ("sdt_8_768", 224, 32, 1000), ("qkformer_10_768", 224, 32, 1000)],
}
SJ_SETTINGS = ("fp32", "fp32+compile", "bf16", "bf16-neuron")   # also the order they run in (bf16-neuron
# changes the model's neurons, so it runs last)


def build_sj_model(name: str, num_classes: int = 10):
    """SpikingJelly's counterpart of ``name`` (SJ_MODELS), in multi-step mode; needs SpikingJelly."""
    import importlib

    from spikingjelly.activation_based import functional
    module, factory, kwargs = SJ_MODELS[name]
    model = getattr(importlib.import_module(module), factory)(num_classes=num_classes, **kwargs)
    functional.set_step_mode(model, "m")
    return model


def sj_steps(model, x, y, compiled: bool = False, precision: str = "fp32"):
    """``(train, infer)``: SpikingJelly's train step (reset the neurons' state, forward, cross-entropy,
    backward, SGD with momentum 0.9) and inference step on ``model``, through ``torch.compile`` when
    ``compiled``. ``precision``: ``fp32``, ``bf16`` (``torch.autocast``) or ``bf16-neuron`` (its
    ``prepare_model_for_precision`` with bf16 neuron storage; changes ``model``'s neurons in place;
    CUDA only). The caller sets ``model.train()`` / ``model.eval()``."""
    import contextlib

    import torch
    import torch.nn.functional as F
    from spikingjelly.activation_based import functional
    if precision == "fp32":
        def ac():
            return contextlib.nullcontext()
    elif precision == "bf16":
        def ac():
            return torch.autocast(x.device.type, dtype=torch.bfloat16)
    elif precision == "bf16-neuron":
        from spikingjelly.activation_based.precision import prepare_model_for_precision
        art = prepare_model_for_precision(model, x.device, {"mode": "bf16", "neuron_storage": "bf16"})
        if art.model is not model:
            raise RuntimeError("prepare_model_for_precision replaced the model; expected it to configure it in place")
        ac = art.autocast_context
    else:
        raise ValueError(f"precision must be fp32, bf16 or bf16-neuron, got {precision!r}")
    net = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train():
        functional.reset_net(model)
        with ac():
            out = net(x)
        if out.dim() == 3:   # spikformer_cifar10 returns per-step logits [T, N, K]
            out = out.mean(0)
        F.cross_entropy(out.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer():
        functional.reset_net(model)
        with torch.inference_mode(), ac():
            net(x)

    return train, infer


WORKER = r'''
import gc, json, sys
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["bench_dir"])
import torch
from compare_spikingjelly import build_sj_model, sj_steps
from spikeformers.analysis.bench import median_time as timed
dev = cfg["device"]; cuda = dev.startswith("cuda")
torch.set_num_threads(cfg["threads"]); torch.manual_seed(0)
model = build_sj_model(cfg["model"], cfg["num_classes"]).to(dev)
B, S, K = cfg["batch"], cfg["img_size"], cfg["num_classes"]
x = torch.randn(B, 3, S, S, device=dev); y = torch.randint(0, K, (B,), device=dev)
out = {}
if cuda:
    try:
        from spikingjelly.activation_based.functional.neuron import neuron_implementation
        out["neuron_implementation"] = neuron_implementation("lif", torch.device(dev))["implementation"]
    except Exception as e:
        out["neuron_implementation"] = f"unknown ({type(e).__name__}: {str(e)[:200]})"

def peak():
    return torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else float("nan")

def fresh():
    gc.collect()
    if cuda:
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()

for setting in cfg["settings"]:
    compiled = setting.endswith("+compile")
    warm = cfg["warmup"] + 2 * compiled
    train = infer = None
    try:
        fresh()
        train, infer = sj_steps(model, x, y, compiled, setting.split("+")[0])
        model.train(); tr = timed(train, warm, cfg["reps"], dev); tr_mem = peak()
        fresh()
        model.eval(); inf = timed(infer, warm, cfg["reps"], dev); in_mem = peak()
        out[setting] = {"train_img_s": B / tr, "infer_img_s": B / inf, "train_peak_mem_mb": tr_mem,
                        "infer_peak_mem_mb": in_mem}
    except Exception as e:   # one setting failing (out of memory, an unsupported path) must not lose the others
        out[setting] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    del train, infer
print("RESULT " + json.dumps(out))
'''

PEAK = r'''
import json, statistics, torch
n, res = 8192, {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name()}
try:
    import triton; res["triton"] = triton.__version__
except ImportError:
    pass
for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
    a = torch.randn(n, n, device="cuda", dtype=dtype); b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); a @ b; e.record(); e.synchronize(); ts.append(s.elapsed_time(e) / 1e3)
    res[f"peak_{name}_tflops"] = 2 * n ** 3 / statistics.median(ts) / 1e12
    del a, b
res["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
print("RESULT " + json.dumps(res))
'''


def ensure_sj_venv(path: Path, wheels: str | None = None) -> Path:
    """A venv with spikingjelly==2.0.0 (no dependencies) that also sees this interpreter's packages.
    Made without pip inside (nothing to bootstrap offline): this interpreter's pip installs into its
    site-packages. ``wheels``: install from that folder of wheel files alone (no network)."""
    py = path / "bin" / "python"
    if not py.exists():
        print(f"creating {path} ...", flush=True)
        venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    sp = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
    Path(sp, "_spikeformers_parent.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # --no-deps: its declared dependencies would pull a CUDA torch. Its import chain also needs loguru and
    # h5py, installed alone where this interpreter lacks them (numpy comes from the parent env).
    need = [pkg for pkg, mod in (("spikingjelly==2.0.0", "spikingjelly"), ("loguru", "loguru"), ("h5py", "h5py"))
            if subprocess.run([str(py), "-c", f"import {mod}"], capture_output=True).returncode != 0]
    if need:
        src = ["--no-index", "--find-links", str(Path(wheels).resolve())] if wheels else []
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                        "--disable-pip-version-check", "--target", sp, *src, *need], check=True)
    r = subprocess.run([str(py), "-c", "import spikingjelly.activation_based.model.spikformer"], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SystemExit(f"SpikingJelly does not import in {path}:\n{r.stderr[-2000:]}")
    return py


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_ours(w: tuple, a, precision: str | None = None) -> dict | None:
    model, img, batch, classes = w
    cmd = [sys.executable, "-m", "spikeformers", "bench", "--model", model, "--T", "4", "--batch", str(batch),
           "--img-size", str(img), "--num-classes", str(classes), "--threads", str(a.threads), "--reps", str(a.reps),
           "--device", a.device, "--json"]
    cmd += (["--compile"] if a.ours_compile else []) + (["--precision", precision] if precision else [])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=a.proc_timeout)
    except subprocess.TimeoutExpired:
        print(f" [ours timed out after {a.proc_timeout} s]", end="", flush=True)
        return None
    if r.returncode != 0:
        print(f"\nspikeformers bench failed for {model}:\n{r.stderr[-3000:]}", flush=True)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_sj(py: Path, w: tuple, a) -> dict | None:
    model, img, batch, classes = w
    cfg = {"model": model, "bench_dir": str(ROOT / "benchmarks"), "threads": a.threads, "reps": a.reps, "warmup": 2,
               "settings": a.sj_settings, "device": a.device, "img_size": img, "batch": batch, "num_classes": classes}
    try:
        r = subprocess.run([str(py), "-c", WORKER, json.dumps(cfg)], capture_output=True, text=True, env=_env(),
                           timeout=a.proc_timeout)
    except subprocess.TimeoutExpired:
        print(f" [SpikingJelly timed out after {a.proc_timeout} s]", end="", flush=True)
        return None
    if r.returncode != 0:
        print(f"\nSpikingJelly worker failed for {model}:\n{r.stderr[-3000:]}", flush=True)
        return None
    res = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    for s in a.sj_settings:
        if "error" in res.get(s, {}):
            print(f" [SJ {s}: {res[s]['error']}]", end="", flush=True)
    return res


def gpu_facts() -> dict:
    """Versions, GPU name and the measured bf16 / fp32 matmul peaks (in a process of its own)."""
    r = subprocess.run([sys.executable, "-c", PEAK], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"the matmul peak measurement failed:\n{r.stderr[-3000:]}")
    return json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[7:])


def select_workloads(a) -> list[tuple]:
    preset = WORKLOADS[a.workloads]
    if a.models:
        names = [m for m in a.models.split(",") if m]
        known = {w[0]: w for w in preset}
        preset = [known.get(m, (m, 32, preset[0][2], 10)) for m in names]
    for m, *_ in preset:
        if m not in SJ_MODELS:
            raise SystemExit(f"no SpikingJelly counterpart for {m!r}; expected some of {sorted(SJ_MODELS)}")
    return [(m, a.img_size or s, a.batch or b, a.num_classes or k) for m, s, b, k in preset]


def _med(values) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else float("nan")


def _f(v: float, fmt: str = ".1f") -> str:
    return "n/a" if v != v else format(v, fmt)


def label(w: tuple) -> str:
    m, s, b, k = w
    return f"{m}, {s}x{s}, {k} classes, batch {b}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (ours: spikeformers bench --device; SpikingJelly: the same)")
    ap.add_argument("--workloads", default=None, choices=sorted(WORKLOADS),
                    help="preset list of workloads (default: gpu on cuda, cpu on cpu)")
    ap.add_argument("--models", default=None, help="keep only these models of the preset (comma-separated)")
    ap.add_argument("--batch", type=int, default=None, help="override every workload's batch size")
    ap.add_argument("--img-size", type=int, default=None, help="override every workload's input size")
    ap.add_argument("--num-classes", type=int, default=None, help="override every workload's class count")
    ap.add_argument("--rounds", type=int, default=2, help="A B rounds (A B A B = 2)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sj-settings", default=None,
                    help=f"comma-separated, of {', '.join(SJ_SETTINGS)} (default: fp32 on cpu, fp32,bf16,bf16-neuron on cuda)")
    ap.add_argument("--sj-compile", action="store_true", help="also time torch.compile'd SpikingJelly (fp32+compile)")
    ap.add_argument("--ours-compile", action="store_true",
                    help="run ours with `spikeformers bench --compile` (torch.compile; minutes of compiling)")
    ap.add_argument("--ours-fp32", default="", help="after the rounds, time ours once more with --precision fp32 on "
                    "these models (comma-separated, or 'all'), if the deadline allows")
    ap.add_argument("--venv", default=str(ROOT / "benchmarks" / ".sj-venv"))
    ap.add_argument("--wheels", default=None, help="install SpikingJelly from this folder of wheels only (offline)")
    ap.add_argument("--deadline", type=float, default=0,
                    help="seconds: start no round (or --ours-fp32 run) that would end past this (0: no limit)")
    ap.add_argument("--proc-timeout", type=int, default=900, help="seconds one bench / SpikingJelly process may take")
    ap.add_argument("--json", default=None, help="write all measurements here")
    ap.add_argument("--md", default=None, help="write the tables (Markdown, with the command and machine) here")
    a = ap.parse_args()
    t0 = time.perf_counter()
    cuda = a.device.startswith("cuda")
    a.workloads = a.workloads or ("gpu" if cuda else "cpu")
    settings = (a.sj_settings.split(",") if a.sj_settings else (["fp32", "bf16", "bf16-neuron"] if cuda else ["fp32"]))
    if a.sj_compile and "fp32+compile" not in settings:
        settings.append("fp32+compile")
    bad = [s for s in settings if s not in SJ_SETTINGS]
    if bad or (not cuda and "bf16-neuron" in settings):
        raise SystemExit(f"--sj-settings: expected some of {', '.join(SJ_SETTINGS)} (bf16-neuron on cuda only), got {bad or settings}")
    a.sj_settings = [s for s in SJ_SETTINGS if s in settings]
    workloads = select_workloads(a)
    py = ensure_sj_venv(Path(a.venv), a.wheels)
    facts = gpu_facts() if cuda else {}
    if facts:
        print(f"{facts['gpu']}: torch {facts['torch']} (CUDA {facts['cuda']}), Triton {facts.get('triton', '-')}; "
              f"matmul peaks bf16 {facts['peak_bf16_tflops']:.0f} TFLOP/s, fp32 {facts['peak_fp32_tflops']:.0f} TFLOP/s "
              f"(8192^3, random data, median of 10)", flush=True)
    keys = [label(w) for w in workloads]
    raw = {k: {"ours": [], "sj": []} for k in keys}
    done, last = 0, 0.0
    ours_fp32: dict = {}

    def finish(final: bool) -> None:
        """Tables and files from what has been measured so far (written after every round, so a run
        stopped from outside keeps its completed rounds)."""
        summary = {k: summarize(raw[k], a.sj_settings) for k in keys}
        for k, r in ours_fp32.items():
            if r:
                summary[k].update(ours_fp32_train=r["train_img_s"], ours_fp32_infer=r["infer_img_s"])
        dev_name = next((r.get("cpu", "") for k in keys for r in raw[k]["ours"] if r), "")
        lines = report(a, keys, summary, facts, done, dev_name)
        if final:
            print("\n" + "\n".join(lines), flush=True)
        if a.md:
            cmd = "python benchmarks/compare_spikingjelly.py " + " ".join(sys.argv[1:])
            Path(a.md).write_text(f"`{cmd}` ({time.strftime('%Y-%m-%d')})\n\n" + "\n".join(lines) + "\n")
        if a.json:
            Path(a.json).write_text(json.dumps({"args": vars(a), "facts": facts, "rounds_done": done,
                                                "summary": summary, "raw": raw, "ours_fp32": ours_fp32}, indent=2))

    for rnd in range(a.rounds):
        if rnd and a.deadline and time.perf_counter() - t0 + last > a.deadline:
            print(f"deadline: stopping after {done} round(s)", flush=True)
            break
        t_round = time.perf_counter()
        for w, k in zip(workloads, keys):
            print(f"round {rnd + 1}/{a.rounds} {k}: ours ...", end="", flush=True)
            raw[k]["ours"].append(run_ours(w, a))
            print(" SpikingJelly ...", end="", flush=True)
            raw[k]["sj"].append(run_sj(py, w, a))
            print(f" done ({time.perf_counter() - t0:.0f} s)", flush=True)
        last, done = time.perf_counter() - t_round, rnd + 1
        finish(False)
    for w in workloads:
        if not (a.ours_fp32 == "all" or w[0] in a.ours_fp32.split(",")):
            continue
        k = label(w)
        if a.deadline and time.perf_counter() - t0 + 2 * last / max(len(workloads), 1) > a.deadline:
            print(f"deadline: no --ours-fp32 run for {k}", flush=True)
            continue
        print(f"ours fp32 {k} ...", end="", flush=True)
        ours_fp32[k] = run_ours(w, a, "fp32")
        print(f" done ({time.perf_counter() - t0:.0f} s)", flush=True)
    finish(True)


def summarize(raw: dict, settings: list[str]) -> dict:
    ours = [r for r in raw["ours"] if r]
    sj = [r for r in raw["sj"] if r]
    s = {"ours_train": _med(r["train_img_s"] for r in ours), "ours_infer": _med(r["infer_img_s"] for r in ours),
         "ours_infer_float": _med(r.get("infer_float_img_s") for r in ours),
         "ours_peak_mem_mb": _med(r.get("train_peak_mem_mb", r["peak_mem_mb"]) for r in ours),
         "ours_gflops_s": _med(r["gflops_s"] for r in ours), "ours_infer_gflops_s": _med(r["infer_gflops_s"] for r in ours),
         "ours_train_gflop_per_step": _med(r["train_gflop_per_step"] for r in ours),
         "ours_precision": ours[0]["precision"] if ours else "", "ours_int8": bool(ours and ours[0].get("int8")),
         "ours_bench_peak_bf16_gflops_s": _med(r["peak_bf16_gflops_s"] for r in ours),
         "sj_neuron_implementation": next((r["neuron_implementation"] for r in sj if "neuron_implementation" in r), ""),
         "rounds_ours": len(ours), "rounds_sj": len(sj)}
    for st in settings:
        for what in ("train_img_s", "infer_img_s", "train_peak_mem_mb"):
            s[f"sj_{st}_{what}"] = _med(r.get(st, {}).get(what) for r in sj)
        errs = [r[st]["error"] for r in sj if "error" in r.get(st, {})]
        if errs:
            s[f"sj_{st}_error"] = errs[0]
    for what in ("train", "infer"):
        vals = {st: s[f"sj_{st}_{what}_img_s"] for st in settings if s[f"sj_{st}_{what}_img_s"] == s[f"sj_{st}_{what}_img_s"]}
        best = max(vals, key=vals.get) if vals else ""
        s[f"sj_best_{what}_setting"] = best
        s[f"sj_best_{what}"] = vals[best] if best else float("nan")
        s[f"{what}_ratio"] = s[f"ours_{what}"] / s[f"sj_best_{what}"] if best else float("nan")
    if s["ours_int8"]:
        s["infer_float_ratio"] = s["ours_infer_float"] / s["sj_best_infer"] if s["sj_best_infer"] == s["sj_best_infer"] else float("nan")
    return s


def report(a, keys, summary, facts, done, dev_name) -> list[str]:
    cuda = bool(facts)
    st = a.sj_settings
    first = summary[keys[0]] if keys else {}
    lines = [(f"T = 4, medians of {done} A/B round(s) (each {a.reps} timed steps after 2 warm-ups), {a.threads} CPU threads; "
             f"ours: `spikeformers bench --device {a.device}` defaults ({first.get('ours_precision', '?')}"
             f"{', compiled' if a.ours_compile else ''}{', int8 inference' if first.get('ours_int8') else ''}); "
             f"SpikingJelly 2.0.0: {', '.join(st)}"
             f"{' (neurons: ' + first['sj_neuron_implementation'] + ')' if first.get('sj_neuron_implementation') else ''}"
             f"{'; ' + dev_name if dev_name else ''}")]
    if facts:
        lines.append(f"torch {facts['torch']} (CUDA {facts['cuda']}), Triton {facts.get('triton', '-')}; measured matmul "
                     f"peaks: bf16 {facts['peak_bf16_tflops']:.0f} TFLOP/s, fp32 {facts['peak_fp32_tflops']:.0f} TFLOP/s")
    lines.append("")
    sjh = [f"SJ {s}" for s in st]
    hdr = ["workload", "ours train", *sjh, "ratio", "ours infer", *sjh, "ratio"]
    if not cuda and any(summary[k]["ours_int8"] for k in keys):
        hdr += ["ours infer, float products", "ratio"]
    lines += ["Images per second (ratio: ours / SpikingJelly's best setting, named)", "",
              "| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for k in keys:
        s = summary[k]
        row = [k, _f(s["ours_train"]), *[_f(s[f"sj_{x}_train_img_s"]) for x in st],
               f"{_f(s['train_ratio'], '.2f')}x ({s['sj_best_train_setting'] or '-'})",
               _f(s["ours_infer"]), *[_f(s[f"sj_{x}_infer_img_s"]) for x in st],
               f"{_f(s['infer_ratio'], '.2f')}x ({s['sj_best_infer_setting'] or '-'})"]
        if len(hdr) > len(row):
            row += [_f(s["ours_infer_float"]), f"{_f(s.get('infer_float_ratio', float('nan')), '.2f')}x"]
        lines.append("| " + " | ".join(row) + " |")
    if cuda:
        peak = facts["peak_bf16_tflops"] * 1e3
        lines += ["", ("Memory and arithmetic (ours' GFLOP: torch's FLOP counter, convolutions and matmuls; "
                  "% of the measured bf16 matmul peak)"), ""]
        hdr = ["workload", "ours GFLOP / train step", "ours train TFLOP/s", "% of peak", "ours infer TFLOP/s",
               "% of peak", "ours peak memory GB", *[f"SJ {x} train peak GB" for x in st]]
        lines += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
        for k in keys:
            s = summary[k]
            lines.append("| " + " | ".join([
                k, _f(s["ours_train_gflop_per_step"], ".0f"), _f(s["ours_gflops_s"] / 1e3), _f(100 * s["ours_gflops_s"] / peak),
                _f(s["ours_infer_gflops_s"] / 1e3), _f(100 * s["ours_infer_gflops_s"] / peak),
                _f(s["ours_peak_mem_mb"] / 1024), *[_f(s[f"sj_{x}_train_peak_mem_mb"] / 1024) for x in st]]) + " |")
    fp32 = [(k, s) for k, s in summary.items() if "ours_fp32_train" in s]
    if fp32:
        lines += ["", "Ours in fp32 (`--precision fp32`, one run) against SpikingJelly fp32", "",
                  "| workload | ours fp32 train | SJ fp32 train | ratio | ours fp32 infer | SJ fp32 infer | ratio |",
                  "|---|---|---|---|---|---|---|"]
        for k, s in fp32:
            tr, inf = s.get("sj_fp32_train_img_s", float("nan")), s.get("sj_fp32_infer_img_s", float("nan"))
            lines.append(f"| {k} | {_f(s['ours_fp32_train'])} | {_f(tr)} | {_f(s['ours_fp32_train'] / tr, '.2f')}x "
                         f"| {_f(s['ours_fp32_infer'])} | {_f(inf)} | {_f(s['ours_fp32_infer'] / inf, '.2f')}x |")
    errs = [f"{k}: SJ {x}: {summary[k][f'sj_{x}_error']}" for k in keys for x in st if f"sj_{x}_error" in summary[k]]
    if errs:
        lines += ["", "SpikingJelly settings that failed:"] + [f"- {e}" for e in errs]
    return lines


if __name__ == "__main__":
    main()
