"""One process's place in an ``accelerate launch``: its part of the data, and the collectives.

``Shard()`` is the single process: every method is then the identity and calls no collective, so
code written against a :class:`Shard` runs unchanged without a launcher. Collectives use the process
group that ``accelerate`` initialised (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

#: elements per all-reduce: bounds the temporary flat copy a bucket needs
BUCKET_ELEMENTS = 1 << 24


def _buckets(tensors: Sequence[torch.Tensor], limit: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive runs of tensors with one dtype and device and at most ``limit`` elements (or one tensor)."""
    run: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        if run and (t.dtype != run[0].dtype or t.device != run[0].device or size + t.numel() > limit):
            yield run
            run, size = [], 0
        run.append(t)
        size += t.numel()
    if run:
        yield run


#: seconds a finished launch leaves the process group's worker threads before destroying it
SETTLE_S = 0.1


def end_process_group() -> None:
    """End the launch's process group, if one was initialised: call it once a launched program has succeeded.

    Every process waits for the others (a barrier), then releases the GIL briefly, then destroys the group.
    Why: gloo's worker threads drop a finished collective's tensors after the collective has returned, and
    need the GIL to do so. If the group is destroyed (or the interpreter torn down) while one of them waits
    for the GIL, the process deadlocks (the destructor joins that thread holding the GIL) or aborts
    ("terminate called without an active exception"). A process that leaves right after its last collective
    hits this. Not for a failed process: the barrier would wait for peers that may never arrive.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    time.sleep(SETTLE_S)  # the worker threads take the GIL and finish dropping the collectives' tensors
    dist.destroy_process_group()


@dataclass(frozen=True)
class Shard:
    """Process ``rank`` of ``world``; ``device`` is where collective buffers live (the model's device)."""

    rank: int = 0
    world: int = 1
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not in [0, world={self.world})")

    @classmethod
    def current(cls) -> Shard:
        """This process in the current ``accelerate launch`` (one process when not launched)."""
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
        return cls(state.process_index, state.num_processes, state.device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def part(self, items: Sequence[T]) -> list[T]:
        """This process's contiguous part of ``items`` (sizes differ by at most one; may be empty)."""
        n = len(items)
        return list(items[n * self.rank // self.world : n * (self.rank + 1) // self.world])

    def strided(self, items: Sequence[T]) -> list[T]:
        """Every ``world``-th item, starting at ``rank`` (for passes over many batches)."""
        return list(items[self.rank :: self.world])

    def all_sum(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum each tensor over processes, in place (bucketed: one collective per bucket)."""
        if self.world == 1:
            return
        for run in _buckets(tensors, BUCKET_ELEMENTS):
            if len(run) == 1 and run[0].is_contiguous():
                dist.all_reduce(run[0])
                continue
            flat = torch.cat([t.reshape(-1) for t in run])
            dist.all_reduce(flat)
            offset = 0
            for t in run:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def broadcast(self, tensors: Sequence[torch.Tensor]) -> None:
        """Overwrite each (contiguous) tensor with process 0's, in place; bool tensors travel as bytes."""
        if self.world == 1:
            return
        for t in tensors:
            if not t.is_contiguous():
                raise ValueError("broadcast needs contiguous tensors")
            dist.broadcast(t.view(torch.uint8) if t.dtype == torch.bool else t, src=0)

    def gather(self, items: list[Any]) -> list[Any]:
        """Every process's ``items`` (picklable), concatenated in process order, on every process."""
        if self.world == 1:
            return list(items)
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, list(items))
        return [x for part in parts for x in part]

    def sum_floats(self, values: dict[str, float]) -> dict[str, float]:
        """The sum over processes of each value (every process must pass the same keys, in order)."""
        if self.world == 1 or not values:
            return dict(values)
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(values, t.tolist(), strict=True))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()
