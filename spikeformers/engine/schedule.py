"""Learning-rate schedules: linear warm-up, cosine decay to ``min_lr``, a cool-down at ``min_lr``."""

from __future__ import annotations

import math

from .config import ScheduleConfig

__all__ = ["lr_schedule", "lr_at"]


def lr_schedule(sched: ScheduleConfig, lr: float, step: int, steps_per_epoch: int, total: int) -> float:
    """The learning rate at optimizer ``step`` of ``total``: warm-up from ``warmup_lr`` then cosine
    from ``lr`` to ``min_lr``, held for ``cooldown_epochs``. ``sched_per='epoch'`` evaluates it at
    whole epochs (timm's per-epoch stepping)."""
    warmup = int(round(sched.warmup_epochs * steps_per_epoch))
    cosine_end = max(1, total - sched.cooldown_epochs * steps_per_epoch)
    if sched.sched_per == "epoch":
        e = step // max(steps_per_epoch, 1)
        step, warmup = e * steps_per_epoch, int(round(sched.warmup_epochs)) * steps_per_epoch
        if step < warmup:
            return sched.warmup_lr + (lr - sched.warmup_lr) * step / warmup
        # timm CosineLRScheduler (warmup_prefix=False): the warm-up overlays the cosine's start
        p = min(1.0, step / cosine_end)
        return sched.min_lr + 0.5 * (lr - sched.min_lr) * (1.0 + math.cos(math.pi * p))
    if step < warmup and sched.warmup_lr > 0:
        return sched.warmup_lr + (lr - sched.warmup_lr) * step / warmup
    return lr_at(step, cosine_end, warmup, lr, sched.min_lr)


def lr_at(step: int, total: int, warmup: int, base: float, min_lr: float) -> float:
    """Linear warm-up from 0 over ``warmup`` steps, then cosine from ``base`` to ``min_lr``."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (base - min_lr) * (1.0 + math.cos(math.pi * min(1.0, p)))
