"""Multi-process helpers for ``torchrun``: process-group setup, the batch-sharding sampler and
rank-0 utilities. Single-process runs go through the same code with world size 1."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "barrier", "from_rank0", "cleanup"]


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
