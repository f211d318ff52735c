"""Seeded forget/retain step plans for the unlearning loop: which examples each step sees.

A plan is a pure function of its arguments, so two runs with the same seed see the same
batches in the same order, and the pairing is inspectable before anything is trained.

* ``joint`` — every step is a forget step: forget examples are walked in a seeded per-epoch
  permutation, and each step is paired with a retain batch drawn by a generator seeded
  from ``(seed, step)`` alone (so the pairing does not depend on anything else).
* ``interleave`` — the reference MMUnlearner schedule: per epoch, the retain set is walked in a
  seeded permutation and one forget step follows every ``n_retain_batches // n_forget_batches``
  retain steps (forget batches left over go at the end). Forget steps carry the same
  ``(seed, step)`` retain pairing as in ``joint``, for methods with their own retain term.
  Without retain steps (``retain_steps=False``, i.e. retain weight 0) it is the joint plan.
  ``retain_per_forget=k`` walks only the first ``k`` retain batches per forget batch of that
  permutation (k retain steps before each forget step): a fixed, method-independent number of retain
  steps, so that two schedules can be compared at equal forget steps and a known retain budget.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import torch

Pairing = Literal["joint", "interleave"]
PAIRINGS: tuple[str, ...] = ("joint", "interleave")


@dataclass(frozen=True)
class Step:
    """One optimizer step: its kind, epoch, and the forget / retain example indices it uses."""

    kind: Literal["forget", "retain"]
    epoch: int
    forget: tuple[int, ...] = ()
    retain: tuple[int, ...] = ()


def _generator(seed: int, *key: object) -> torch.Generator:
    """A CPU generator seeded from a hash of ``(seed, *key)`` (independent streams per key)."""
    digest = hashlib.sha256(repr((seed, *key)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _batches(n: int, batch_size: int, seed: int, *key: object) -> list[tuple[int, ...]]:
    order = torch.randperm(n, generator=_generator(seed, *key)).tolist()
    return [tuple(order[k : k + batch_size]) for k in range(0, n, batch_size)]


def paired_retain(n_retain: int, batch_size: int, seed: int, step: int) -> tuple[int, ...]:
    """The retain batch paired with step ``step``: a function of ``(seed, step)`` only."""
    if n_retain == 0:
        return ()
    perm = torch.randperm(n_retain, generator=_generator(seed, "pair", step))
    return tuple(perm[:batch_size].tolist())


def plan_steps(
    n_forget: int,
    n_retain: int,
    *,
    batch_size: int,
    epochs: int,
    seed: int,
    pairing: Pairing = "joint",
    retain_steps: bool = True,
    max_steps: int | None = None,
    retain_per_forget: int | None = None,
) -> list[Step]:
    """The whole step plan of a run (see the module doc), cut to ``max_steps`` if given."""
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; choose one of {list(PAIRINGS)}")
    if n_forget < 1 or batch_size < 1 or epochs < 1:
        raise ValueError(f"need n_forget, batch_size, epochs >= 1, got {n_forget}, {batch_size}, {epochs}")
    interleave = pairing == "interleave" and retain_steps and n_retain > 0
    steps: list[Step] = []
    for epoch in range(epochs):
        forget = _batches(n_forget, batch_size, seed, "forget", epoch)
        order: list[tuple[str, tuple[int, ...]]] = [("forget", b) for b in forget]
        if interleave:
            retain = _batches(n_retain, batch_size, seed, "retain", epoch)
            if retain_per_forget is not None:
                retain = retain[: retain_per_forget * len(forget)]
            every = max(1, len(retain) // len(forget)) if retain_per_forget is None else retain_per_forget
            order, pending = [], iter(forget)
            for i, batch in enumerate(retain):
                order.append(("retain", batch))
                if (i + 1) % every == 0 and (f := next(pending, None)) is not None:
                    order.append(("forget", f))
            order += [("forget", f) for f in pending]
        for kind, batch in order:
            if kind == "retain":
                steps.append(Step("retain", epoch, retain=batch))
            else:
                pair = paired_retain(n_retain, batch_size, seed, len(steps))
                steps.append(Step("forget", epoch, forget=batch, retain=pair))
    return steps if max_steps is None else steps[:max_steps]
