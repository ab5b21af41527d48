"""Fast batches from an in-memory uint8 image tensor, with batched augmentation on tensors."""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError

__all__ = ["InMemoryLoader", "random_crop_flip", "random_erase"]


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


def check_erasing(p: float, mode: str) -> None:
    """Raise a ValueError unless ``p`` is a probability and ``mode`` one of :func:`random_erase`'s."""
    if mode not in ("const", "rand", "pixel"):
        raise ConfigError(f"random erasing mode must be const, rand or pixel, got {mode!r}")
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"random erasing probability must be in [0, 1], got {p}")


def random_erase(x: torch.Tensor, p: float, generator: torch.Generator, mode: str = "const",
                 min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3,
                 attempts: int = 10) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017; the rule of timm's ``RandomErasing``) of a normalised batch
    ``x[B, C, H, W]``, vectorised: each image, with probability ``p``, gets one rectangle of area
    fraction in ``[min_area, max_area]`` and log-uniform aspect ratio in ``[min_aspect, 1/min_aspect]``
    filled with 0 (``mode="const"``: the dataset mean after normalisation), one normal value per
    channel (``"rand"``) or per pixel (``"pixel"``). Of ``attempts`` draws per image the first that
    fits inside the image is used; an image none of whose draws fits is left as it is."""
    check_erasing(p, mode)
    B, C, H, W = x.shape
    if p == 0 or B == 0:
        return x
    area = H * W * (min_area + (max_area - min_area) * torch.rand(B, attempts, generator=generator))
    lo, hi = math.log(min_aspect), math.log(1 / min_aspect)
    aspect = torch.exp(lo + (hi - lo) * torch.rand(B, attempts, generator=generator))
    eh = torch.sqrt(area * aspect).round().long()
    ew = torch.sqrt(area / aspect).round().long()
    fits = (eh > 0) & (eh < H) & (ew > 0) & (ew < W)
    first = torch.where(fits.any(1), fits.float().argmax(1), 0)        # first fitting attempt
    eh, ew = eh.gather(1, first[:, None])[:, 0], ew.gather(1, first[:, None])[:, 0]
    erase = (torch.rand(B, generator=generator) < p) & fits.any(1)
    top = (torch.rand(B, generator=generator) * (H - eh + 1)).long().clamp_max(H - 1)
    left = (torch.rand(B, generator=generator) * (W - ew + 1)).long().clamp_max(W - 1)
    rows, cols = torch.arange(H), torch.arange(W)
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])                       # [B,H]
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])                     # [B,W]
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None])[:, None]  # [B,1,H,W]
    if mode == "const":
        fill = torch.zeros((), dtype=x.dtype)
    elif mode == "rand":
        fill = torch.randn(B, C, 1, 1, generator=generator).to(x.dtype)
    else:
        fill = torch.randn(B, C, H, W, generator=generator).to(x.dtype)
    return torch.where(mask, fill, x)


class InMemoryLoader:
    """Iterates ``(images float [B,C,H,W] normalised, labels int64 [B])`` over uint8 images
    ``[N,H,W]`` or ``[N,C,H,W]``. ``train=True`` shuffles (seeded per epoch) and augments (random crop
    with ``padding``, horizontal flip, and random erasing with probability ``erasing`` after
    normalisation, see :func:`random_erase`). With a ``sampler`` (a
    :class:`~spikeformers.data.sampler.BlockShardSampler`) the batches are this process's shard."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean: float, std: float,
                 train: bool = False, padding: int = 2, flip: bool = True, seed: int = 0, drop_last: bool = False,
                 erasing: float = 0.0, erasing_mode: str = "const", sampler=None):
        if images.dim() == 3:
            images = images.unsqueeze(1)
        self.images, self.labels = images, labels
        self.batch_size, self.mean, self.std = batch_size, mean, std
        self.train, self.padding, self.flip, self.seed = train, padding, flip, seed
        self.drop_last = drop_last
        check_erasing(erasing, erasing_mode)
        self.erasing, self.erasing_mode = erasing, erasing_mode
        self.sampler = sampler   # a BlockShardSampler: this process's shard of every global batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.labels) if self.sampler is None else len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else len(self.labels)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        n = len(self.labels)
        if self.sampler is not None:
            order = torch.tensor(list(self.sampler), dtype=torch.long)
        else:
            order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx].float().div_(255.0)
            if self.train:
                x = random_crop_flip(x, self.padding, self.flip, g)
            x = (x - self.mean) / self.std
            if self.train and self.erasing > 0:
                x = random_erase(x, self.erasing, g, self.erasing_mode)
            yield x, self.labels[idx]
