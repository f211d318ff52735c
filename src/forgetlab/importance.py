"""Diagonal Fisher importance, ``I[j] = E[(dL/dθ_j)^2]``, for selected parameters.

Two estimators (``docs/reference.md#importance``):

* ``batch`` — square the gradient of each *batch*-mean loss, average over batches. This is
  what the MMUnlearner reference computes; it costs one forward+backward per batch, the
  same as a training epoch, so it is the **default**.
* ``example`` — square each *example*'s gradient, then average: the textbook empirical
  Fisher, one forward+backward per example (slower).

The two estimate different things. Write ``g_i`` for example i's gradient of one parameter
element, ``μ`` and ``σ²`` for the mean and variance of ``g_i`` over the data. A batch gradient is
(about) the mean of B example gradients, so its square has expectation ``μ² + σ²/B``; the
per-example estimate is ``μ² + σ²``. The batch estimate is therefore not a rescaled per-example
one: how much the noise term ``σ²`` counts depends on B, and it counts differently for elements whose
gradient is mostly signal (``μ² ≫ σ²``) and mostly noise (``μ² ≪ σ²``). The mask rule compares
I_f with I_p, both computed with the same estimator and batch size, but the ratio ``I_f / I_p``, and
so the mask, still changes with the estimator and with B. (The batch loss is a token mean over
the whole batch, so the "mean of B example gradients" is weighted by each example's token count.)

Accumulation happens in fp32 on the parameters' device; nothing is copied to the host
per batch. With a :class:`~forgetlab.dist.shard.Shard` of several processes, each process takes every
N-th batch and the sums of squares are all-reduced once at the end: the result equals the
one-process importance up to float summation order (batches are never split, so each squared
batch gradient is exactly the one-process one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from forgetlab.data.collate import Encoded, collate
from forgetlab.dist.shard import Shard
from forgetlab.models.groups import parameter_aliases
from forgetlab.models.inputs import forward_kwargs, to_model

Estimator = Literal["batch", "example"]
ESTIMATORS: tuple[str, ...] = ("batch", "example")


def answer_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Token-mean NLL over the batch's supervised (label != -100) positions (the batch is moved to the
    model's device)."""
    batch = to_model(model, batch)
    labels = batch["labels"]
    logits = model(**forward_kwargs(model, batch), use_cache=False).logits[:, :-1].float()
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100
    )


def fisher_importance(
    model: nn.Module,
    examples: Sequence[Encoded],
    params: set[str],
    *,
    pad_id: int,
    estimator: Estimator = "batch",
    batch_size: int = 8,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] = answer_nll,
    shard: Shard | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of ``loss_fn`` over ``examples`` for each parameter named in ``params``.

    Gradients of other parameters are not computed (``requires_grad`` is switched off for
    the pass and restored afterwards). ``shard`` splits the batches over processes (module doc);
    every process must call this with the same arguments, and gets the same result.

    A tied tensor (e.g. ``lm_head.weight`` shared with the input embeddings) is one parameter: it may
    be named by any of its names, and its importance is returned once, under its canonical name (the
    one ``named_parameters()`` lists, see :mod:`forgetlab.models.groups`), from the gradient of
    the shared tensor (the sum of what flows through each use).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown importance estimator {estimator!r}; choose one of {list(ESTIMATORS)}")
    if not examples:
        raise ValueError("cannot estimate importance from an empty set of examples")
    named = dict(model.named_parameters())
    aliases = parameter_aliases(model)
    unknown = params - aliases.keys()
    if unknown:
        raise KeyError(f"{len(unknown)} parameter names not in the model, e.g. {sorted(unknown)[:3]}")
    params = {aliases[n] for n in params}
    saved = {n: p.requires_grad for n, p in named.items()}
    for n, p in named.items():
        p.requires_grad_(n in params)
    acc = {n: torch.zeros_like(named[n], dtype=torch.float32) for n in params}
    size = 1 if estimator == "example" else batch_size
    shard = shard or Shard()
    starts = range(0, len(examples), size)
    bad: int | None = None  # first batch with a non-finite loss: every process raises, after the collective
    was_training = model.training
    model.eval()  # no dropout: importance of the model as it is
    try:
        for k in shard.strided(starts):
            batch = collate(examples[k : k + size], pad_id)
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                bad = k
                break
            loss.backward()
            have = [n for n in params if named[n].grad is not None]
            grads = [named[n].grad.float() for n in have]
            torch._foreach_addcmul_([acc[n] for n in have], grads, grads)  # one fused op over every tensor
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in named.items():
            p.requires_grad_(saved[n])
        model.train(was_training)
    failed = torch.tensor([int(bad is not None)], device=shard.device)
    shard.all_sum([failed])
    if failed.item():
        where = f"batch starting at {bad}" if bad is not None else "in another process's batches"
        raise FloatingPointError(f"non-finite loss while estimating importance ({where})")
    names = sorted(acc)  # the same order on every process
    shard.all_sum([acc[n] for n in names])
    for t in acc.values():
        t.div_(len(starts))
    return acc
