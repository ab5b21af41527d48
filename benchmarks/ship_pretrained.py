"""Make the pretrained folder that ships inside the package from a training run: weights cast to
float16, then the card's figures measured on what was written (the float16 weights loaded back):
accuracy on the whole Fashion-MNIST test set, the firing rate of that test pass, and the energy per
image (paper accounting) on the first test images.

    spikeformers train --out runs/shipped                      # the default recipe (about 12 min, 2 cores)
    python benchmarks/ship_pretrained.py runs/shipped          # -> spikeformers/pretrained/a2os2a_fmnist/
    pytest -q tests/test_pretrained.py -m slow                 # the card's accuracy, re-measured

The run's last checkpoint is shipped (the recipe's final weights; the best-epoch checkpoint would be
chosen on the test set the card reports). ``--model-kwargs`` overrides constructor arguments the
checkpoint does not record (a run made before an option existed keeps that option's old default).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from spikeformers import FiringRateMonitor, from_pretrained
from spikeformers.analysis import energy as E
from spikeformers.engine import TrainConfig, evaluate, load_checkpoint
from spikeformers.engine.hardware import cpu_name
from spikeformers.engine.trainer import data_loaders
from spikeformers.models import model_entry
from spikeformers.models.pretrained import SHIPPED_DIR

_DATA_NOTE = {"fashion-mnist": "Fashion-MNIST (Xiao et al. 2017; MIT licence), 60,000 training images"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder of `spikeformers train` (its last.safetensors), or a checkpoint file")
    ap.add_argument("--out", default=None, help="the folder to write [default: spikeformers/pretrained/MODEL]")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--model-kwargs", default=None, help="JSON of constructor arguments the checkpoint lacks")
    ap.add_argument("--recipe", default=None, help="the command that trained it [default: from the run's config]")
    ap.add_argument("--energy-images", type=int, default=256)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-mb", type=float, default=2.0, help="refuse a folder larger than this")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    run = Path(a.run)
    ckpt = run / "last.safetensors" if run.is_dir() else run
    overrides = json.loads(a.model_kwargs) if a.model_kwargs else {}
    model, meta = load_checkpoint(ckpt, **overrides)
    name = model.model_name
    tc = TrainConfig.from_dict(meta.get("train_config") or {})
    data = tc.data.name
    out = Path(a.out) if a.out else SHIPPED_DIR / name
    m = meta.get("metrics") or {}
    recipe = a.recipe or f"spikeformers train --out {run if run.is_dir() else run.parent}"
    if overrides and not a.recipe:     # what the run had by default then, to be given now
        recipe += f" --model-kwargs '{json.dumps(overrides)}'"
    if tc.model.name != "a2os2a_fmnist" or tc.data.name != "fashion-mnist":
        recipe += f"   # model {tc.model.name}, data {tc.data.name}"

    _, test, info = data_loaders(tc.replace(data_dir=a.data_dir or tc.data.dir, batch_size=500, eval_images=None), progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "m", dtype=a.dtype)   # weights as shipped, to measure them
        shipped = from_pretrained(Path(tmp) / "m")
    t0 = time.perf_counter()
    with FiringRateMonitor(shipped) as mon:
        ev = evaluate(shipped, test, progress=False)
    eval_s = time.perf_counter() - t0
    ref = evaluate(model.eval(), test, progress=False)
    xs, n = [], 0
    for x, _ in test:
        xs.append(x[: a.energy_images - n])
        n += len(xs[-1])
        if n >= a.energy_images:
            break
    tot = E.measure(shipped, xs).totals("paper")
    entry = model_entry(name)
    card = {
        "architecture": f"{(sys.modules[entry.factory.__module__].__doc__ or name).splitlines()[0]} "
                        f"{entry.meta.get('source', '')}.",
        "data": data,
        "accuracy": {"top1": round(ev["acc"], 2), "split": "test", "images": ev["n"],
                     "note": f"{a.dtype} weights loaded into float32; float32 weights before the cast: "
                             f"{ref['acc']:.2f} %"},
        "firing_rate": round(mon.rate, 4),
        "energy": {"mJ_per_image": float(f"{tot['energy_mj']:.4g}"), "accounting": "paper",
                   "MACs": float(f"{tot['macs']:.4g}"), "ACs": float(f"{tot['acs']:.4g}"),
                   "images": n, "rule": tot.get("rule")},
        "recipe": recipe,
        "training": {"epochs": meta.get("epoch"), "seed": tc.runtime.seed, "precision": tc.runtime.precision,
                     "minutes": round(m["elapsed_s"] / 60, 1) if "elapsed_s" in m else None},
        "source": f"trained from scratch by spikeformers on {_DATA_NOTE.get(data, data)}; the run's last "
                  f"epoch (its test accuracy was not used to pick it); measured on {cpu_name()}",
        "license": "MIT",
        "shipped": True,
    }
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, dtype=a.dtype, **card)
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    print(f"{name}: {out} ({size:.2f} MiB, {a.dtype}); test accuracy {ev['acc']:.2f} % on {ev['n']} images "
          f"(float32 {ref['acc']:.2f} %), eval {eval_s:.1f} s; firing rate {mon.rate:.4f}; "
          f"energy {tot['energy_mj']:.4g} mJ/image (paper, {n} images)")
    if size > a.max_mb:
        sys.exit(f"{out} is {size:.2f} MiB, over --max-mb {a.max_mb}")


if __name__ == "__main__":
    main()
