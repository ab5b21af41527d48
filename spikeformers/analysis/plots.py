"""Pictures of a run: its training curves (``spikeformers plot RUN_DIR``; ``train`` draws the same
``curves.png`` beside its checkpoints) and the firing rates of a
:class:`~spikeformers.analysis.firing.FiringRateMonitor`.

The figures are drawn on a standalone :class:`matplotlib.figure.Figure` (no pyplot, no GUI backend,
no global state), so they work on a headless machine and inside a training process.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import ConfigError, InputError

__all__ = ["read_metrics", "plot_run", "plot_firing"]

# (metric key, label) per panel; a panel is drawn when at least one of its keys has a value
_PANELS = [
    ("loss", [("train_loss", "train"), ("test_loss", "test"), ("test_loss_raw", "test (trained weights)")]),
    ("accuracy (%)", [("train_acc", "train"), ("test_acc", "test"), ("test_acc_raw", "test (trained weights)")]),
    ("learning rate (epoch end)", [("lr", "lr")]),
    ("firing rate (test pass)", [("firing_rate", "all spiking layers")]),
]


def read_metrics(run_dir) -> list[dict]:
    """The epoch records of ``run_dir/metrics.jsonl`` (or of that file given directly), in order; a
    resumed run's repeated epochs keep their last record."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise InputError(f"{path} does not exist: expected a run folder written by `spikeformers train` "
                         "(it holds metrics.jsonl, one JSON line per epoch)")
    by_epoch: dict = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}, line {i}: not valid JSON ({e.msg}); expected one JSON object per epoch") from None
        if not isinstance(rec, dict):
            raise InputError(f"{path}, line {i}: expected a JSON object, got {type(rec).__name__}")
        by_epoch[rec.get("epoch", i)] = rec
    if not by_epoch:
        raise InputError(f"{path} holds no epoch yet: nothing to plot")
    return [by_epoch[k] for k in sorted(by_epoch, key=lambda k: (not isinstance(k, (int, float)), k))]


def _value(rec: dict, key: str):
    v = rec.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def plot_run(run_dir, out=None, title: str | None = None) -> Path:
    """Draw the curves of the run in ``run_dir`` (loss, accuracy, learning rate and, when recorded,
    the firing rate of the test pass with its per-layer rates) into ``out`` (default
    ``run_dir/curves.png``); returns the path written."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    recs = read_metrics(run_dir)
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else (run_dir if run_dir.is_dir() else run_dir.parent) / "curves.png"
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(recs)]
    panels = [(t, s) for t, s in _PANELS if any(_value(r, k) is not None for r in recs for k, _ in s)]
    rows, cols = math.ceil(len(panels) / 2), min(len(panels), 2)
    height = 3.6 * rows + 0.4                 # fixed margins in inches: a constrained layout costs
    fig = Figure(figsize=(5.2 * cols, height), dpi=100)            # 3x the drawing, in every run
    fig.subplots_adjust(left=0.8 / (5.2 * cols), right=0.98, bottom=0.55 / height, top=1 - 0.5 / height,
                        wspace=0.28, hspace=0.38)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (ylabel, series) in zip(axes, panels):
        for key, label in series:
            pts = [(e, _value(r, key)) for e, r in zip(epochs, recs) if _value(r, key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=label)
        if ylabel.startswith("firing"):
            layers = sorted({n for r in recs for n in (r.get("firing_rates") or {})})
            if 1 < len(layers) <= 12:        # per-layer lines, thin, when there are not too many
                for n in layers:
                    pts = [(e, r["firing_rates"][n]) for e, r in zip(epochs, recs)
                           if isinstance((r.get("firing_rates") or {}).get(n), (int, float))]
                    if pts:
                        ax.plot(*zip(*pts), lw=0.8, alpha=0.6, label=n)
        if ylabel.startswith("learning"):
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ylabel.startswith("firing"):
            ax.legend(fontsize=6, ncol=2, framealpha=0.6)
        else:
            ax.legend(fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title or f"{run_dir.resolve().name if run_dir.is_dir() else run_dir.name}: "
                 f"{len(recs)} epoch{'s' if len(recs) != 1 else ''}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def plot_firing(summary: dict, path, title: str | None = None, per_step: dict | None = None) -> Path:
    """Bar chart of the per-layer firing rates of a :meth:`FiringRateMonitor.summary` (ternary
    layers stacked as +1 and -1) and, when ``per_step`` has layers with T > 1, one line per layer
    over the time steps. Returns the path written."""
    from matplotlib.figure import Figure

    rates = {n: v for n, v in (summary.get("firing_rates") or {}).items() if v is not None}
    if not rates:
        raise ConfigError("no firing rate to plot: no spiking layer ran while the monitor was watching")
    tern = summary.get("firing_rates_ternary") or {}
    steps = {n: v for n, v in (per_step or {}).items() if len(v) > 1}
    names = list(rates)
    fig = Figure(figsize=(max(6.0, 0.28 * len(names) + 2), 4.2 + (3.2 if steps else 0)), dpi=100,
                 layout="constrained")
    axes = fig.subplots(2 if steps else 1, 1, squeeze=False).ravel()
    ax = axes[0]
    x = range(len(names))
    pos = [tern[n][0] if n in tern else rates[n] for n in names]
    neg = [tern[n][1] if n in tern else 0.0 for n in names]
    ax.bar(x, pos, color="tab:blue", label="spikes (+1)")
    if any(neg):
        ax.bar(x, neg, bottom=pos, color="tab:orange", label="ternary -1")
    mean = summary.get("firing_rate")
    if mean is not None:
        ax.axhline(mean, color="k", lw=0.8, ls="--", label=f"all layers {mean:.3f}")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("firing rate (non-zero fraction)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if steps:
        ax2 = axes[1]
        for n, v in steps.items():
            ax2.plot(range(len(v)), v, lw=0.8, marker=".", label=n if len(steps) <= 12 else None)
        ax2.set_xlabel("time step t")
        ax2.set_ylabel("firing rate")
        ax2.grid(alpha=0.3)
        if len(steps) <= 12:
            ax2.legend(fontsize=6)
    fig.suptitle(title or "firing rate per layer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
