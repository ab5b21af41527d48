"""Test-set evaluation: loss, top-1 accuracy, per-class accuracy, throughput."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = ["evaluate", "logits_of"]


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` as ``[B, K]``: per-time-step logits ``[T, B, K]`` (TET models) are averaged."""
    logits = model(x)
    return logits.mean(0) if logits.ndim == 3 else logits


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, desc: str = "eval", progress: bool = True,
             tta_flip: bool = False) -> dict:
    """Mean cross-entropy ``loss``, top-1 accuracy ``acc`` (%), ``per_class_acc`` (%, one entry per
    class seen), ``img_s`` and image count ``n`` of ``model`` over ``loader``. ``tta_flip`` averages
    the logits of each image and its horizontal mirror (test-time augmentation; twice the cost;
    never used during training)."""
    model.eval()
    n, loss_sum, correct, t0 = 0, 0.0, 0, time.perf_counter()
    hits, counts = None, None
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    device = next(model.parameters()).device
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = logits_of(model, x)
        if tta_flip:
            logits = (logits + logits_of(model, x.flip(-1))) / 2
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        right = logits.argmax(-1) == y
        correct += right.sum().item()
        n += len(y)
        K = logits.shape[-1]
        if hits is None:
            hits, counts = torch.zeros(K, dtype=torch.long), torch.zeros(K, dtype=torch.long)
        hits += torch.bincount(y[right].cpu(), minlength=K)[:K]
        counts += torch.bincount(y.cpu(), minlength=K)[:K]
    per_class = [] if counts is None else [100.0 * h / c if c else float("nan") for h, c in
                                           zip(hits.tolist(), counts.tolist())]
    return {"loss": loss_sum / max(n, 1), "acc": 100.0 * correct / max(n, 1),
            "img_s": n / max(time.perf_counter() - t0, 1e-9), "n": n, "per_class_acc": per_class}
