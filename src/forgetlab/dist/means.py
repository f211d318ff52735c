"""Means over the *global* batch while each process holds only part of it.

Every loss reduction in :mod:`forgetlab.methods._common` is a sum over selected positions (tokens,
sequences, attended positions) divided by how many were selected. Inside :func:`global_means`,
:func:`mean_divisor` all-reduces that count, so each process's loss is its *share*
``local sum / global count``: the shares (and their gradients) add up to the loss one process
computes on the whole batch, whatever the token counts of the parts. The trainer therefore *sums*
gradients and logged values over processes. Without the context, or with one process, the divisor
is the local count and the numbers are exactly those of a single-process run.

A process whose part of a batch is empty (a global batch smaller than the number of processes)
computes on a :func:`stand_in` instead: an example of the batch with nothing selected, so it runs
the same forward passes and collectives as the others and adds exactly zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

from forgetlab.dist.shard import Shard

#: batch key (metadata, never passed to the model) marking a stand-in batch: no position counts
STAND_IN = "_stand_in"
IGNORE_INDEX = -100

_SHARD: ContextVar[Shard | None] = ContextVar("forgetlab_global_means", default=None)


@contextmanager
def global_means(shard: Shard) -> Iterator[None]:
    """Within the block, losses divide by counts summed over ``shard``'s processes (see the module doc)."""
    if shard.world == 1:
        yield
        return
    token = _SHARD.set(shard)
    try:
        yield
    finally:
        _SHARD.reset(token)


def mean_divisor(count: torch.Tensor, what: str = "supervised tokens") -> torch.Tensor:
    """The divisor of a mean over ``count`` selected positions: global inside :func:`global_means`.

    Raises ``ValueError`` when nothing is selected (in the whole global batch), on every process alike.
    """
    shard = _SHARD.get()
    if shard is not None:
        count = count.detach().clone()
        shard.all_sum([count])
    if not bool(count):
        raise ValueError(f"batch has no {what}; is every label -100 or padding?")
    return count


def stand_in(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with every label ignored and :data:`STAND_IN` set: it contributes nothing to any mean."""
    return {**batch, "labels": torch.full_like(batch["labels"], IGNORE_INDEX), STAND_IN: True}
