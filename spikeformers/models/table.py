"""The models table of the README and docs, generated from the registry: ``python -m spikeformers.models.table``
(or ``spikeformers models --markdown``). Parameter counts are of our models, built on the ``meta``
device; paper accuracies and sources are the registry's metadata."""

from __future__ import annotations

import torch

from .registry import create_model, list_models, model_entry

__all__ = ["markdown_table"]


def _accuracy(meta: dict) -> str:
    top1 = meta.get("paper_top1") or {}
    return "; ".join(f"{v:g} ({k})" for k, v in top1.items()) or "—"


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
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    print(markdown_table())
