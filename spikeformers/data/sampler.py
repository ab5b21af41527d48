"""The sampler that shards every global batch across processes."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

from ..errors import ConfigError

__all__ = ["BlockShardSampler"]


class BlockShardSampler(Sampler[int]):
    """Indices of this rank's share of every global batch.

    One permutation per epoch (seeded by ``seed + epoch``, the same on every rank) is cut into
    global batches of ``batch_size * world_size * group`` indices, and those into blocks of
    ``batch_size``; micro-batch ``j`` of rank ``r`` is block ``j * world_size + r``. So
    ``world_size`` processes with ``group`` accumulation steps read, together, exactly the blocks
    one process with ``group * world_size`` accumulation steps reads. Incomplete global batches
    are dropped.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, group: int = 1):
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, {world_size}), got {rank}")
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.shuffle, self.group, self.epoch = seed, shuffle, max(1, group), 0
        self.global_batch = batch_size * world_size * self.group
        if n < self.global_batch:
            raise ConfigError(f"dataset has {n} samples, fewer than one global batch of {self.global_batch} "
                             f"(batch_size {batch_size} x {world_size} processes x {self.group} accumulation steps)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.n // self.global_batch) * self.batch_size * self.group

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        B, W = self.batch_size, self.world_size
        for s in range(self.n // self.global_batch):
            base = s * self.global_batch
            for j in range(self.group):  # micro-batch j of this rank = block (j * W + rank)
                start = base + (j * W + self.rank) * B
                yield from perm[start:start + B]
