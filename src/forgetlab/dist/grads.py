"""Summing gradients over processes after a backward pass run without DDP's own synchronisation.

Why not DDP's hooks: a forgetlab step may run several forward passes before one backward (forget
batch, then retain batch), and the parameters they use can differ per process (a VQA forget part,
a text-only retain part: the vision tower is unused in the second pass). DDP's reducer cannot
follow that (``find_unused_parameters`` marks such parameters ready twice), so the trainer runs the
step under ``accelerator.no_sync`` and calls :func:`sum_gradients` once, after backward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from forgetlab.dist.shard import Shard


def sum_gradients(params: Sequence[torch.nn.Parameter], shard: Shard) -> None:
    """Sum ``.grad`` over processes in place, keeping a single process's ``None`` pattern.

    A parameter no process computed a gradient for keeps ``grad=None`` everywhere (AdamW then
    skips it, as one process would); one that any process used gets zeros where it was unused.
    Losses are per-process shares of the global mean (:mod:`forgetlab.dist.means`), so the sum is
    the gradient of the whole batch.
    """
    if shard.world == 1:
        return
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=shard.device)
    shard.all_sum([used])
    grads = []
    for p, count in zip(params, used.tolist(), strict=True):
        if not count:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    shard.all_sum(grads)
