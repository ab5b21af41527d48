"""Multi-process helpers for ``torchrun``: process-group setup, the batch-sharding sampler and
rank-0 utilities. Single-process runs go through the same code with world size 1."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["DistContext", "init_distributed", "BlockShardSampler", "barrier", "cleanup"]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistContext:
    """Join the process group ``torchrun`` describes in the environment (WORLD_SIZE, RANK,
    LOCAL_RANK, MASTER_ADDR/PORT): NCCL when CUDA is available, gloo otherwise. Without
    WORLD_SIZE > 1 this is a single process (on CUDA if available)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world <= 1:
        return DistContext(device=torch.device("cuda" if cuda else "cpu"))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return DistContext(rank, world, local, torch.device(f"cuda:{local}" if cuda else "cpu"))


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def from_rank0(ctx: DistContext, value):
    """``value`` as rank 0 has it, on every rank (a picklable object; itself when not distributed).
    For decisions that must agree across ranks but may differ per process, such as a timing probe."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


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
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.shuffle, self.group, self.epoch = seed, shuffle, max(1, group), 0
        self.global_batch = batch_size * world_size * self.group
        if n < self.global_batch:
            raise ValueError(f"dataset has {n} samples, fewer than one global batch of {self.global_batch} "
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
