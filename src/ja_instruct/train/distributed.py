"""The process group: one code path for a laptop and a cluster.

* without ``torchrun`` there is no process group: one process, ``Dist()`` with rank 0;
* under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) a process group is created (nccl on
  GPUs, gloo on CPU) and every helper below becomes collective.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass
class Dist:
    """Where this process stands: rank, world size, device; ``enabled`` when a process group exists."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks, in place (no-op in one process). NCCL reduces device tensors
        only, so the tensor travels to this rank's device and back."""
        if self.enabled:
            x = t.to(self.device)
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
            t.copy_(x)
        return t

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0, then on the other ranks once rank 0 is done: for work whose
        first call creates a shared file (converting a model, building a dataset) that every
        rank then only reads."""
        if self.is_main:
            result = fn()
        self.barrier()
        if not self.is_main:
            result = fn()
        return result


def setup_distributed() -> Dist:
    """Join the process group when launched by torchrun; a plain single process otherwise."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist(device=torch.device("cuda", 0) if cuda else torch.device("cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # nccl for GPUs; gloo is the CPU backend (FSDP2 runs on it, slowly, for tests and laptops).
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                device=device, enabled=True)


def teardown_distributed(d: Dist) -> None:
    """Leave the process group (a no-op in one process)."""
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
