"""Fast batches from an in-memory uint8 image tensor, with batched augmentation on tensors."""

from __future__ import annotations

import math

import torch

__all__ = ["InMemoryLoader", "random_crop_flip"]


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop (zero padding ``padding`` on each side, same output size) and random
    horizontal flip (p = 0.5) of a batch ``x[B, C, H, W]``, vectorised."""
    B, C, H, W = x.shape
    if padding > 0:
        xp = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (B,), generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (B,), generator=generator)
        rows = (oy[:, None] + torch.arange(H))[:, :, None]            # [B,H,1]
        cols = (ox[:, None] + torch.arange(W))[:, None, :]            # [B,1,W]
        x = xp[torch.arange(B)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # [B,C,H,W]
    if flip:
        mask = torch.rand(B, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x.contiguous()


class InMemoryLoader:
    """Iterates ``(images float [B,C,H,W] normalised, labels int64 [B])`` over uint8 images
    ``[N,H,W]`` or ``[N,C,H,W]``. ``train=True`` shuffles (seeded per epoch) and augments (random crop
    with ``padding`` and horizontal flip)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean: float, std: float,
                 train: bool = False, padding: int = 2, flip: bool = True, seed: int = 0, drop_last: bool = False):
        if images.dim() == 3:
            images = images.unsqueeze(1)
        self.images, self.labels = images, labels
        self.batch_size, self.mean, self.std = batch_size, mean, std
        self.train, self.padding, self.flip, self.seed = train, padding, flip, seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else len(self.labels)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx].float().div_(255.0)
            if self.train:
                x = random_crop_flip(x, self.padding, self.flip, g)
            yield (x - self.mean) / self.std, self.labels[idx]
