"""Diagonal Fisher importance, ``I[j] = E[(dL/dθ_j)^2]``, for selected parameters.

Two estimators (``docs/reference.md#importance``):

* ``batch`` — square the gradient of each *batch*-mean loss, average over batches. This is
  what the MMUnlearner reference computes; it costs one forward+backward per batch, the
  same as a training epoch, so it is the **default**.
* ``example`` — square each *example*'s gradient, then average: the textbook empirical
  Fisher. When every selected parameter belongs to a linear layer, an embedding or an
  elementwise-affine norm that sees the batch as ``[B, T, ...]`` (a language model's), the
  per-example gradients come from ONE forward+backward per batch: hooks keep each layer's input
  and output gradient, and example i's gradient of a linear weight is ``Σ_t g_it a_itᵀ`` (of an
  embedding row, the sum of ``g_it`` over the positions holding that token; of a norm's weight,
  ``Σ_t g_it ⊙ x̂_it``), squared and summed before the next example's. Otherwise (vision towers,
  tied weights, a custom loss) one forward+backward per example. Both give the same numbers up
  to float summation order.

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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from forgetlab.data.collate import Encoded, collate
from forgetlab.dist.shard import Shard
from forgetlab.models.groups import language_module, parameter_aliases
from forgetlab.models.inputs import forward_kwargs, to_model

Estimator = Literal["batch", "example"]
ESTIMATORS: tuple[str, ...] = ("batch", "example")


def _token_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token NLL at every position ``[B, T-1]`` (0 where the label is -100) and the supervised mask (the
    batch is moved to the model's device)."""
    batch = to_model(model, batch)
    labels = batch["labels"][:, 1:]
    logits = model(**forward_kwargs(model, batch), use_cache=False).logits[:, :-1].float()
    nll = nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return nll, labels != -100


def answer_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Token-mean NLL over the batch's supervised (label != -100) positions (the batch is moved to the
    model's device)."""
    nll, supervised = _token_nll(model, batch)
    return nll.sum() / supervised.sum()


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
    shard = shard or Shard()
    if estimator == "example" and loss_fn is answer_nll:
        sites = _per_example_sites(model, params)
        if sites is not None:
            try:
                return _batched_example_fisher(model, examples, params, sites, pad_id, batch_size, shard)
            except _Reused:
                pass  # a module ran twice in one forward pass: one pass per example instead
    acc = {n: torch.zeros_like(named[n], dtype=torch.float32) for n in params}
    size = 1 if estimator == "example" else batch_size
    starts = range(0, len(examples), size)
    bad: str | None = None  # the first batch with a non-finite loss: every process raises, after the collective
    with _scoring(model, params):
        for k in shard.strided(starts):
            batch = collate(examples[k : k + size], pad_id)
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                bad = f"batch starting at {k}"
                break
            loss.backward()
            have = [n for n in params if named[n].grad is not None]
            grads = [named[n].grad.float() for n in have]
            torch._foreach_addcmul_([acc[n] for n in have], grads, grads)  # one fused op over every tensor
    return _reduce(acc, bad, shard, len(starts))


@contextmanager
def _scoring(model: nn.Module, trainable: set[str]) -> Iterator[None]:
    """Eval mode (no dropout: importance of the model as it is) and ``requires_grad`` only on ``trainable``
    for the pass; gradients cleared and both restored afterwards."""
    named = dict(model.named_parameters())
    saved = {n: p.requires_grad for n, p in named.items()}
    was_training = model.training
    for n, p in named.items():
        p.requires_grad_(n in trainable)
    model.eval()
    try:
        yield
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in named.items():
            p.requires_grad_(saved[n])
        model.train(was_training)


def _reduce(acc: dict[str, torch.Tensor], bad: str | None, shard: Shard, count: int) -> dict[str, torch.Tensor]:
    """The sums of squares of every process over ``count`` batches or examples; if any process met a non-finite
    loss (``bad``: where, on this one), all of them raise."""
    failed = torch.tensor([int(bad is not None)], device=shard.device)
    shard.all_sum([failed])
    if failed.item():
        raise FloatingPointError(f"non-finite loss while estimating importance ({bad or 'in another process'})")
    names = sorted(acc)  # the same order on every process
    shard.all_sum([acc[n] for n in names])
    for t in acc.values():
        t.div_(count)
    return acc


# --------------------------------------------------------------------------- per-example gradients, batched


#: elements of per-example weight gradients held at once (64 MiB of fp32)
_CHUNK = 1 << 24


class _Reused(RuntimeError):
    """A hooked module ran more than once in one forward pass (its per-example sums would be wrong)."""


def _is_affine_norm(module: nn.Module) -> bool:
    own = dict(module.named_parameters(recurse=False))
    return (
        not isinstance(module, (nn.Linear, nn.Embedding))
        and not list(module.children())
        and "weight" in own
        and own["weight"].dim() == 1
        and set(own) <= {"weight", "bias"}
        and ("norm" in type(module).__name__.lower())
    )


def _per_example_sites(model: nn.Module, params: set[str]) -> dict[str, tuple[nn.Module, str]] | None:
    """``{canonical parameter name: (module, "weight" | "bias")}`` for the batched per-example pass, or None when
    some selected parameter is outside the language model, is tied, or is not a linear / embedding / norm one."""
    lang = language_module(model)  # the language model: the part that sees the batch as [B, T, d]
    head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
    inside = {id(p) for p in lang.parameters()} | ({id(p) for p in head.parameters()} if head is not None else set())
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)) or _is_affine_norm(module):
            for kind, p in module.named_parameters(recurse=False):
                owners.setdefault(id(p), []).append((module, kind))
    named = dict(model.named_parameters())
    sites: dict[str, tuple[nn.Module, str]] = {}
    for name in params:
        p = named[name]
        found = owners.get(id(p), [])
        if id(p) not in inside or len(found) != 1:
            return None  # outside the language model, tied (two modules), or an unsupported kind
        module, kind = found[0]
        if isinstance(module, nn.Embedding) and (module.max_norm is not None or module.scale_grad_by_freq):
            return None
        sites[name] = (module, kind)
    return sites


def _per_example_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each example's token-mean NLL over its supervised positions (NaN for an example with none, as
    :func:`answer_nll` gives for it alone)."""
    nll, supervised = _token_nll(model, batch)
    return nll.sum(1) / supervised.sum(1)


def _batched_example_fisher(
    model: nn.Module,
    examples: Sequence[Encoded],
    params: set[str],
    sites: dict[str, tuple[nn.Module, str]],
    pad_id: int,
    batch_size: int,
    shard: Shard,
) -> dict[str, torch.Tensor]:
    """The ``example`` estimator from one forward+backward per batch (module doc); the same result and
    errors as one pass per example."""
    named = dict(model.named_parameters())
    acc = {n: torch.zeros_like(named[n], dtype=torch.float32) for n in params}
    by_module: dict[nn.Module, dict[str, str]] = {}
    for name, (module, kind) in sites.items():
        by_module.setdefault(module, {})[kind] = name
    ran: dict[nn.Module, int] = {}

    def accumulate(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
        want = by_module[module]
        g = g.float()
        if "bias" in want:
            b = g.reshape(g.shape[0], -1, g.shape[-1]).sum(1)
            acc[want["bias"]].add_((b * b).sum(0))
        if isinstance(module, nn.Embedding):
            for i in range(g.shape[0]):
                rows, inverse = x[i].reshape(-1).unique(return_inverse=True)
                gi = g[i].reshape(-1, g.shape[-1])
                e = torch.zeros(len(rows), gi.shape[-1], dtype=gi.dtype, device=gi.device).index_add_(0, inverse, gi)
                if module.padding_idx is not None:
                    e[rows == module.padding_idx] = 0  # the padding row gets no gradient
                acc[want["weight"]].index_put_((rows,), e * e, accumulate=True)
        elif "weight" in want and isinstance(module, nn.Linear):
            g = g.reshape(g.shape[0], -1, g.shape[-1]).transpose(1, 2)  # [B, out, T]
            x = x.reshape(x.shape[0], -1, x.shape[-1]).float()  # [B, T, in]
            step = max(1, _CHUNK // module.weight.numel())  # examples whose [out, in] gradients fit at once
            for i in range(0, g.shape[0], step):
                w = torch.bmm(g[i : i + step], x[i : i + step])
                acc[want["weight"]].add_((w * w).sum(0))
        elif "weight" in want:  # elementwise-affine norm: x holds d(output)/d(weight) per position
            w = (g * x.float()).reshape(g.shape[0], -1, g.shape[-1]).sum(1)
            acc[want["weight"]].add_((w * w).sum(0))

    replaying = False  # the norm's own calls below run its hooks too: they must not count

    def hook(module, args, kwargs, output):
        nonlocal replaying
        if replaying:
            return
        ran[module] = ran.get(module, 0) + 1
        if ran[module] > 1:
            raise _Reused(type(module).__name__)
        x = args[0] if args else next(iter(kwargs.values()))
        if not isinstance(module, (nn.Linear, nn.Embedding)) and "weight" in by_module[module]:
            own = dict(module.named_parameters(recurse=False))
            zero = {k: torch.zeros_like(v) for k, v in own.items()}
            one = dict(zero, weight=torch.ones_like(own["weight"]))
            replaying = True
            try:
                with torch.no_grad():  # the output's derivative in its weight: f(x; w=1, b=0) - f(x; w=0, b=0)
                    x = torch.func.functional_call(module, one, args, kwargs) - torch.func.functional_call(
                        module, zero, args, kwargs
                    )
            finally:
                replaying = False
        else:
            x = x.detach()
        output.register_hook(lambda g: accumulate(module, x, g))

    def source(module, args, output):  # the graph starts at the token embeddings
        return output.detach().requires_grad_(True)

    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))  # less padding
    starts = range(0, len(examples), batch_size)
    bad: str | None = None
    handles = [model.get_input_embeddings().register_forward_hook(source)]
    handles += [m.register_forward_hook(hook, with_kwargs=True) for m in by_module]
    # no parameter requires a gradient: the hooks build each example's from g and x
    with _scoring(model, set()):
        try:
            for k in shard.strided(starts):
                batch = collate([examples[i] for i in order[k : k + batch_size]], pad_id)
                ran.clear()
                losses = _per_example_nll(model, batch)
                if not torch.isfinite(losses).all():
                    bad = f"example {order[k + int((~torch.isfinite(losses)).nonzero()[0])]}"
                    break
                losses.sum().backward()
        finally:
            for h in handles:
                h.remove()
    return _reduce(acc, bad, shard, len(examples))
