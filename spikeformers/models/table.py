"""The models table of the README and docs, generated from the registry: ``python -m spikeformers.models.table``
(or ``spikeformers models --markdown``). Parameter counts are of our models, built on the ``meta``
device; paper accuracies and sources are the registry's metadata."""

from __future__ import annotations

import torch

from .registry import create_model, list_models, model_entry

__all__ = ["markdown_table", "paper_figures", "SECONDARY_MARK", "SECONDARY_NOTE"]


#: Appended to a paper figure whose value, or its attribution to this configuration, rests on a
#: secondary source (``meta["paper_top1_evidence"][dataset]["secondary"]``), not the paper or its code.
SECONDARY_MARK = "†"
SECONDARY_NOTE = (f"{SECONDARY_MARK} secondary source (not the paper's text or official code); "
                  "source and confidence in the model's meta['paper_top1_evidence']")


def paper_figures(meta: dict) -> list[tuple[str, float, bool, str | None]]:
    """``(dataset, top-1 %, secondary, confidence)`` for each paper figure in a model's ``meta``."""
    evidence = meta.get("paper_top1_evidence") or {}
    out = []
    for k, v in (meta.get("paper_top1") or {}).items():
        ev = evidence.get(k) or {}
        out.append((k, v, bool(ev.get("secondary")), ev.get("confidence")))
    return out


def _accuracy(meta: dict) -> str:
    parts = []
    for k, v, secondary, conf in paper_figures(meta):
        mark = (SECONDARY_MARK + (f" {conf} confidence" if conf else "")) if secondary else ""
        parts.append(f"{v:g} ({k}){mark}")
    return "; ".join(parts) or "—"


def markdown_table(pattern: str | None = None) -> str:
    rows = ["| model | T | input | classes | params | paper params | paper top-1 (%) | source |",
            "| --- | ---: | --- | ---: | ---: | ---: | --- | --- |"]
    for name in list_models(pattern):
        e = model_entry(name)
        d, m = e.defaults, e.meta
        with torch.device("meta"):
            n = sum(p.numel() for p in create_model(name).parameters())
        size = f"{d.get('in_chans', '?')}x{d.get('img_size', '?')}x{d.get('img_size', '?')}"
        rows.append(f"| `{name}` | {d.get('T', '?')} | {size} | {d.get('num_classes', '?')} | {n:,} | "
                    f"{m.get('paper_params', '—')} | {_accuracy(m)} | {m.get('source', '—')} |")
    if any(secondary for name in list_models(pattern) for *_, secondary, _ in paper_figures(model_entry(name).meta)):
        rows += ["", SECONDARY_NOTE]
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    print(markdown_table())
