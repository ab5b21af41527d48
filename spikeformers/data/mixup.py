"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a batch, with mixed soft labels,
following timm's ``Mixup`` in 'batch' mode: one lambda per batch, each sample mixed with the
sample at the mirrored batch position (``x.flip(0)``)."""

from __future__ import annotations

import math

import torch

__all__ = ["Mixup", "one_hot_smooth", "mix_targets", "cutmix_box"]


def one_hot_smooth(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot rows with ``1 - smoothing + smoothing/K`` on the label and ``smoothing/K`` elsewhere."""
    off = smoothing / num_classes
    out = torch.full((target.shape[0], num_classes), off, device=target.device)
    return out.scatter_(1, target.long().view(-1, 1), 1.0 - smoothing + off)


def mix_targets(target: torch.Tensor, num_classes: int, lam: float, smoothing: float = 0.0) -> torch.Tensor:
    y1 = one_hot_smooth(target, num_classes, smoothing)
    y2 = one_hot_smooth(target.flip(0), num_classes, smoothing)
    return y1 * lam + y2 * (1.0 - lam)


def cutmix_box(h: int, w: int, lam: float) -> tuple[int, int, int, int]:
    """A box with side ratio sqrt(1 - lam), centre uniform in the image, clipped to it:
    returns (top, bottom, left, right)."""
    ratio = math.sqrt(1.0 - lam)
    ch, cw = int(h * ratio), int(w * ratio)
    cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
    top, bottom = min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h)
    left, right = min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w)
    return top, bottom, left, right


class Mixup:
    """Mix a batch in place and return ``(x, soft_targets)``.

    With probability ``prob`` a batch is mixed; if both ``mixup_alpha`` and ``cutmix_alpha`` are
    positive, CutMix is chosen with probability ``switch_prob``. lambda ~ Beta(alpha, alpha).
    For CutMix the pasted box's area decides the label weight: lambda = 1 - box area / image area.
    Works on images ``[B, C, H, W]`` and on event frames ``[B, T, C, H, W]`` (the box is cut in the
    last two axes, the same at every time step). Targets carry label smoothing.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 0.0,
                 prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1):
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.label_smoothing = prob, switch_prob, label_smoothing
        self.enabled = True
        self.last_lam, self.last_cutmix = 1.0, False

    @property
    def active(self) -> bool:
        return self.enabled and (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def _params(self) -> tuple[float, bool]:
        if not self.active or float(torch.rand(())) >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = float(torch.rand(())) < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        return lam, use_cutmix

    def __call__(self, x: torch.Tensor, target: torch.Tensor):
        lam, use_cutmix = self._params()
        if lam < 1.0:
            if use_cutmix:
                h, w = x.shape[-2:]
                t, b, l, r = cutmix_box(h, w, lam)
                x[..., t:b, l:r] = x.flip(0)[..., t:b, l:r]
                lam = 1.0 - (b - t) * (r - l) / float(h * w)
            else:
                other = x.flip(0).mul_(1.0 - lam)  # flip() copies, before x changes
                x.mul_(lam).add_(other)
        self.last_lam, self.last_cutmix = lam, use_cutmix
        return x, mix_targets(target, self.num_classes, lam, self.label_smoothing)
