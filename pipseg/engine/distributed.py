"""torchrun support: this process's place in the job, and the process group around a run.

:func:`process_group` is the one place that asks torch whether a group exists; inside it,
``DistInfo.enabled`` says whether the collectives below talk to other ranks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Several processes, joined by :func:`process_group`."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op in one process)."""
        if self.enabled:
            dist.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` as a list indexed by rank (``[obj]`` in one process)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over ranks (``tensor`` itself in one process)."""
        if not self.enabled:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out)
        return out / self.world_size


class RankVote:
    """The largest of every rank's integer, agreed by all ranks, over a CPU (gloo) group of its
    own: on a GPU run the vote neither syncs the device nor waits for the default (nccl) stream.
    Create it on every rank at the same point (making the group is a collective)."""

    def __init__(self, info: DistInfo) -> None:
        self.info = info
        self.group = dist.new_group(backend="gloo") if info.enabled else None

    def max(self, value: int) -> int:
        """``max(value over ranks)`` (``value`` itself in one process)."""
        if not self.info.enabled:
            return value
        out = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=self.group)
        return int(out.item())  # a CPU tensor: no device sync


def dist_info_from_env() -> DistInfo:
    """The ranks torchrun put in the environment (defaults: a single process)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


@contextmanager
def process_group(info: DistInfo, device: torch.device) -> Iterator[None]:
    """Join the process group when torchrun started several processes (nccl on CUDA, gloo on
    CPU) and leave it afterwards; a group that already exists is used and left alone."""
    created = info.enabled and not dist.is_initialized()
    if created:
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size, **kwargs)
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()
