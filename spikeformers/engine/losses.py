"""Classification losses used by the paper recipes.

* :func:`soft_target_cross_entropy` - cross-entropy against a distribution (after mixup/cutmix).
* :func:`label_smoothing_cross_entropy` - ``(1 - s) * NLL + s * mean_k(-log p_k)``, which equals
  cross-entropy against ``(1 - s) * onehot + s / K`` (timm's LabelSmoothingCrossEntropy).
* :func:`tet_loss` - Temporal Efficient Training (Deng et al., ICLR 2022), as the SDT repository
  uses it: ``(1 - lam) * mean_t CE(o_t, y) + lam * MSE(o, means)`` over per-time-step logits o_t.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["soft_target_cross_entropy", "label_smoothing_cross_entropy", "tet_loss", "classification_loss",
           "training_loss"]


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.shape != logits.shape:
        raise ConfigError(f"soft targets must have the logits' shape {list(logits.shape)}, got {list(target.shape)}")
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def label_smoothing_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)
    return ((1.0 - smoothing) * nll + smoothing * (-logp.mean(dim=-1))).mean()


def classification_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Soft-target CE when ``target`` is a distribution [B, K], else (smoothed) CE on labels [B]."""
    if target.ndim == logits.ndim:
        return soft_target_cross_entropy(logits, target)
    if smoothing > 0:
        return label_smoothing_cross_entropy(logits, target, smoothing)
    return F.cross_entropy(logits.float(), target.long())


def tet_loss(logits_t: torch.Tensor, target: torch.Tensor, criterion: Callable | None = None,
             means: float = 1.0, lamb: float = 0.001) -> torch.Tensor:
    """TET loss over time-first logits ``[T, B, K]``: the criterion is applied to every time
    step's logits and averaged; ``lamb`` weighs an MSE pulling all logits towards ``means``."""
    if logits_t.ndim != 3:
        raise ConfigError(f"TET expects per-time-step logits [T, B, K], got shape {list(logits_t.shape)}")
    criterion = criterion or classification_loss
    T = logits_t.shape[0]
    loss_es = sum(criterion(logits_t[t], target) for t in range(T)) / T
    if lamb == 0:
        return loss_es
    loss_mse = F.mse_loss(logits_t.float(), torch.full_like(logits_t, means, dtype=torch.float32))
    return (1.0 - lamb) * loss_es + lamb * loss_mse


def training_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0, tet: bool = False,
                  tet_means: float = 1.0, tet_lamb: float = 0.001) -> torch.Tensor:
    """The loss a training step minimises: soft-target CE after mixup, label-smoothed CE otherwise;
    with ``tet`` the TET loss over per-time-step logits ``[T, B, K]``."""
    if logits.ndim == 3:
        if not tet:
            raise ConfigError(f"the model returned per-time-step logits {list(logits.shape)} but tet is off")
        return tet_loss(logits, target, lambda o, t: classification_loss(o, t, label_smoothing), tet_means, tet_lamb)
    return classification_loss(logits, target, label_smoothing)
