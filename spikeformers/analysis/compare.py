"""``spikeformers compare``: every attention on one backbone, one seed, one dataset, one budget.

For each attention entry, :func:`compare` trains ``backbone`` with ``attention=name`` through the
training engine (:func:`spikeformers.engine.fit`, the same :class:`~spikeformers.engine.TrainConfig`
apart from the attention), then measures the trained model. An entry is an attention name, or a name
with options of its own, ``NAME:KEY=VALUE[:KEY=VALUE...]`` (:func:`parse_attention_spec`), so that
settings of one attention compare side by side, e.g. ``a2os2a, a2os2a:proj=none, a2os2a:proj=conv_bn``.
Each row and run folder is named after its entry. The measurements:

* top-1 accuracy on the test set (the engine's last evaluation; with ``recalibrate_bn=N``, after
  re-estimating BatchNorm statistics on N training images, see :func:`~spikeformers.analysis.energy.calibrate_batchnorm`),
* parameters,
* mean firing rate and energy per image under both accountings (``paper``: the backbone family's
  own paper's rule; ``strict``: one rule for all, AC only where an operand is a spike) and the
  number of products without a spike operand (the addition-only audit), from
  :func:`energy_columns` on ``energy_images`` test images,
* training images/s (the engine's last epoch) and inference images/s (eval mode, no grad,
  ``speed_images`` test images after one warm-up batch).

Optionally, without retraining: ``tp_keep=k`` adds a row per attention with TP-Spikformer token
pruning (k² tokens per block), ``halting=True`` a row with STAS-style adaptive halting.

It writes ``compare.md`` (a Markdown table with the run's settings), ``compare.csv``,
``compare.json`` and ``compare.png`` (accuracy against energy, both accountings) into ``out``;
each model's checkpoints and logs are in ``out/<entry>/`` (the entry with any character other than
letters, digits and ``_.=-`` replaced by ``_``, e.g. ``out/a2os2a_proj=none/``).
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from pathlib import Path

import torch
from torch import nn

from ..engine.checkpoint import load_checkpoint
from ..engine.config import TrainConfig
from ..engine.evaluate import evaluate
from ..engine.trainer import data_loaders, fit
from ..errors import ConfigError
from ..models import create_model, model_entry
from ..nn.attention import ATTENTIONS
from . import energy
from .energy import calibrate_batchnorm

__all__ = ["compare", "energy_columns", "parse_attention_spec", "run_folder", "write_table", "plot_accuracy_energy",
           "COLUMNS"]

COLUMNS = [
    ("attention", "attention"),
    ("accuracy", "top-1 (%)"),
    ("params", "params"),
    ("mean_firing_rate", "mean firing rate"),
    ("energy_paper_mj", "energy paper (mJ/img)"),
    ("energy_strict_mj", "energy strict (mJ/img)"),
    ("non_spike_products", "non-spike products"),
    ("train_img_s", "train img/s"),
    ("infer_img_s", "infer img/s"),
]


def parse_attention_spec(spec: str) -> tuple[str, dict]:
    """``"NAME[:KEY=VALUE[:KEY=VALUE...]]"`` -> ``(NAME, {KEY: VALUE, ...})``: the attention's name and
    options of its own for one compared entry. A VALUE is read as JSON where it parses (``1``,
    ``0.5``, ``true``, ``null``, ``"x"``), else kept as the text (``proj=none`` gives ``"none"``)."""
    name, *items = [p.strip() for p in spec.strip().split(":")]
    if not name:
        raise ConfigError(f"attention entry {spec!r} has no name; expected NAME or NAME:KEY=VALUE[:KEY=VALUE...]")
    options = {}
    for item in items:
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key.isidentifier() or not value:
            raise ConfigError(f"attention entry {spec!r}: option {item!r} is not KEY=VALUE; expected "
                              "NAME:KEY=VALUE[:KEY=VALUE...], e.g. a2os2a:proj=none")
        if key in options:
            raise ConfigError(f"attention entry {spec!r} sets option {key!r} twice")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return name, options


def run_folder(label: str) -> str:
    """The run folder name of a compared entry (letters, digits and ``_.=-``; others become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", label)


def energy_columns(model: nn.Module, batches: list[torch.Tensor]) -> dict:
    """The energy columns of one trained model (eval mode) over ``batches`` of input images
    (:func:`spikeformers.analysis.energy.measure`): mean firing rate, energy per image under the ``paper``
    and ``strict`` accountings, and the number of products without a spike operand (the
    addition-only audit, first layer and classifier excepted)."""
    model.eval()
    report = energy.measure(model, batches)
    paper, strict = report.totals("paper"), report.totals("strict")
    rate = paper["mean_firing_rate"]
    return {"mean_firing_rate": float("nan") if rate is None else rate,
            "energy_paper_mj": paper["energy_mj"], "energy_strict_mj": strict["energy_mj"],
            "non_spike_products": len(energy.audit(report)), "energy_note": paper["rule"]}


def _images_per_second(model: nn.Module, batches: list[torch.Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        model(batches[0][:8])  # warm-up
        n, t0 = 0, time.perf_counter()
        for x in batches:
            model(x)
            n += len(x)
    return n / max(time.perf_counter() - t0, 1e-9)


def _test_batches(loader, n_images: int) -> list[torch.Tensor]:
    out, n = [], 0
    for x, _ in loader:
        out.append(x[: n_images - n])
        n += len(out[-1])
        if n >= n_images:
            break
    return out


def _measure(model, row: dict, energy_batches, speed_batches) -> dict:
    row.update(energy_columns(model, energy_batches))
    row["infer_img_s"] = _images_per_second(model, speed_batches)
    return row


def compare(attentions: list[str], backbone: str = "spikedriven_fmnist", out: str = "runs/compare",
            base: TrainConfig | None = None, attn_kwargs: dict | None = None, energy_images: int = 256,
            speed_images: int = 512, tp_keep: int | None = None, halting: bool = False,
            recalibrate_bn: int = 0, progress: bool = True) -> list[dict]:
    """Train and measure ``backbone`` with each attention entry (module docstring); returns the rows.
    ``attentions`` holds names or ``NAME:KEY=VALUE`` entries (:func:`parse_attention_spec`);
    ``attn_kwargs`` ({name: options}) applies to every entry of that name, an entry's own options
    override it. ``base`` holds every other training option (data, epochs, max_steps, seed, batch
    size, T, model_kwargs, ...); its ``model`` and ``out`` are replaced per entry."""
    if not attentions:
        raise ConfigError("compare needs at least one attention name")
    labels = [a.strip() for a in attentions]
    specs = [parse_attention_spec(a) for a in labels]
    unknown = [n for n, _ in specs if n not in ATTENTIONS]
    if unknown:
        raise ConfigError(f"unknown attention(s) {unknown}; expected names from {sorted(ATTENTIONS)}")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"attention names repeat: {labels}")
    for i, (a, b) in enumerate(zip(specs, labels)):
        same = [labels[j] for j in range(i) if specs[j] == a or run_folder(labels[j]) == run_folder(b)]
        if same:
            raise ConfigError(f"attention entries {same[0]!r} and {b!r} are the same setting or share the run "
                              f"folder {run_folder(b)!r}; expected distinct entries")
    model_entry(backbone)  # an unknown backbone fails here, before any training
    if tp_keep is not None or halting:
        with torch.device("meta"):
            probe = create_model(backbone, **(base or TrainConfig()).model.kwargs)
        if not hasattr(probe, "set_token_pruning"):
            raise ConfigError(f"token pruning / halting need a Spike-driven Transformer backbone; "
                             f"{backbone} is a {type(probe).__name__}")
    attn_kwargs = attn_kwargs or {}
    names = [n for n, _ in specs]
    stray = sorted(set(attn_kwargs) - set(names))
    if stray:
        raise ConfigError(f"attn_kwargs for attention(s) {stray} that are not compared ({labels})")
    options = [{**attn_kwargs.get(n, {}), **kw} for n, kw in specs]
    base = base or TrainConfig()
    for label, name, kw in zip(labels, names, options):  # a bad option fails here, before any training
        try:
            with torch.device("meta"):
                create_model(backbone, **{**base.model.kwargs, "attention": name, "attn_kwargs": kw})
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"attention entry {label!r} on {backbone}: {e}") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = base.replace(model=backbone, resume=False)
    train_loader, test_loader, _ = data_loaders(base, progress=progress)
    calib_batches = _test_batches(train_loader, recalibrate_bn) if recalibrate_bn > 0 else []
    energy_batches = _test_batches(test_loader, energy_images)
    speed_batches = _test_batches(test_loader, speed_images)

    rows = []
    for label, name, kw in zip(labels, names, options):
        mk = {**base.model.kwargs, "attention": name}
        if kw:
            mk["attn_kwargs"] = kw
        run = out / run_folder(label)
        cfg = base.replace(out=str(run), model_kwargs=mk)
        if progress:
            print(f"== {label} on {backbone}")
        t0 = time.perf_counter()
        metrics = fit(cfg, progress=progress)
        model, _ = load_checkpoint(run / "last.safetensors")
        acc = metrics["test_acc"]
        if calib_batches:
            acc = evaluate(calibrate_batchnorm(model, calib_batches), test_loader, progress=False)["acc"]
        row = {"attention": label, "accuracy": acc, "engine_test_acc": metrics["test_acc"],
               "params": sum(p.numel() for p in model.parameters()), "train_img_s": metrics["train_img_s"],
               "steps": metrics["step"], "train_wall_s": time.perf_counter() - t0}
        rows.append(_measure(model, row, energy_batches, speed_batches))
        extra = []
        if tp_keep is not None and name != "stmixer":
            extra.append((f"{label} +TP k={tp_keep}", lambda m: m.set_token_pruning(tp_keep)))
        if halting:
            extra.append((f"{label} +halting", lambda m: m.set_halting({})))
        for extra_label, setup in extra:
            m, _ = load_checkpoint(run / "last.safetensors")
            if calib_batches:
                m.load_state_dict(model.state_dict())  # the recalibrated statistics, unpruned
            setup(m)
            ev = evaluate(m, test_loader, progress=False)
            r = {"attention": extra_label, "accuracy": ev["acc"], "engine_test_acc": None, "params": row["params"],
                 "train_img_s": float("nan"), "steps": row["steps"], "train_wall_s": 0.0}
            rows.append(_measure(m, r, energy_batches, speed_batches))
        if progress:
            print(f"   {label}: {row['accuracy']:.2f} %, paper {row['energy_paper_mj']:.4g} mJ, "
                  f"strict {row['energy_strict_mj']:.4g} mJ, {row['infer_img_s']:.0f} img/s")

    settings = {"backbone": backbone, **{k: base.get(k) for k in ("data", "epochs", "max_steps", "batch_size", "lr",
                                                                   "warmup_epochs", "seed", "T", "model_kwargs",
                                                                   "eval_images")},
                "attn_kwargs": attn_kwargs,
                "energy_images": energy_images, "speed_images": speed_images, "tp_keep": tp_keep,
                "halting": halting, "recalibrate_bn": recalibrate_bn, "threads": torch.get_num_threads()}
    write_table(rows, out, settings)
    plot_accuracy_energy(rows, out / "compare.png", title=f"{backbone} on {base.data.name}")
    return rows


def _fmt(key: str, v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if key == "accuracy":
            return f"{v:.2f}"
        if key.endswith("img_s"):
            return f"{v:.0f}"
        return f"{v:.4g}"
    if key == "params":
        return f"{v:,}"
    return str(v)


def write_table(rows: list[dict], out, settings: dict) -> None:
    """``compare.md`` (settings + table), ``compare.csv`` (raw values) and ``compare.json``."""
    out = Path(out)
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |"
    sep = "|" + "|".join("---" if k == "attention" else "---:" for k, _ in COLUMNS) + "|"
    lines = [f"# Attention comparison: {settings['backbone']} on {settings['data']}", "",
             "Settings: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in settings.items()), "",
             head, sep]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(k, r.get(k)) for k, _ in COLUMNS) + " |")
    notes = sorted({r["energy_note"] for r in rows if r.get("energy_note")})
    if notes:
        lines += [""] + [f"Energy: {n}" for n in notes]
    lines += ["", "Energy per image at E_MAC = 4.6 pJ, E_AC = 0.9 pJ (45 nm). `strict`: AC = rate x FLOPs "
              "where an operand is binary/ternary, else MAC; `paper`: the backbone family's own paper's rule. "
              "Non-spike products: products whose two operands are both non-spike (first layer and "
              "classifier excepted); 0 = addition-only."]
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    keys = [k for k, _ in COLUMNS] + ["engine_test_acc", "steps", "train_wall_s"]
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for r in rows:
            w.writerow(["" if r.get(k) is None else r.get(k) for k in keys])
    (out / "compare.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")


def plot_accuracy_energy(rows: list[dict], path, title: str = "") -> None:
    """Accuracy (y) against energy per image (x) under both accountings, one labelled point per row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=100)
    drawn = False
    for key, marker, label in (("energy_paper_mj", "o", "paper accounting"),
                               ("energy_strict_mj", "s", "strict accounting")):
        pts = [(r[key], r["accuracy"], r["attention"]) for r in rows
               if r.get(key) is not None and not math.isnan(r[key])]
        if not pts:
            continue
        drawn = True
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label,
                   facecolors="none" if marker == "s" else None, edgecolors="C1" if marker == "s" else None)
        for x, y, name in pts:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if not drawn:
        ax.text(0.5, 0.5, "no energy numbers", ha="center", transform=ax.transAxes)
    ax.set_xlabel("energy per image (mJ, 45 nm: E_MAC 4.6 pJ, E_AC 0.9 pJ)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "accuracy vs energy")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
