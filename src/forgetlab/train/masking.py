"""Parameter masks for masked unlearning: MMUnlearner's importance mask, and enforcing any method's mask.

:meth:`MMUnlearner.build_mask <forgetlab.methods.mmunlearner.MMUnlearner.build_mask>` calls
:func:`mask_from_samples`; ``forgetlab mask`` calls :func:`compute_mask` to write the same mask to a file.

MMUnlearner's mask (Huo et al., https://arxiv.org/abs/2502.11051; see ``docs/reference.md``) keeps
the elements whose diagonal Fisher importance on the forget set is at least ``gamma`` times that
on a *preserve* set, per module group, with the paper's preserve sets:

- ``vision`` group (vision tower + projector): D_p = retain VQA (other people's images);
- ``language`` group (the LLM and its head): D_p = text-only QA about *all* people, the forget
  people included (so text knowledge about them is protected), + retain VQA;
- I_f is always computed on forget VQA.

Importance uses :func:`forgetlab.importance.fisher_importance` (fp32, on the model's device); with a
``shard`` of several processes each process takes every N-th batch of each pass and the sums are
all-reduced, so every process gets the one-process importance (up to float summation order).
The language preserve importance is the batch-count-weighted mean of the retain-VQA and QA
passes, i.e. the mean over all preserve batches, each batch holding one modality.

Enforcement is shared by every masked method: :func:`attach_mask` checks that mask keys name
trainable parameters (:meth:`Mask.validate`) and freezes the parameters absent from the mask;
the optimizer (:class:`~forgetlab.train.optim.MaskedAdamW`) zeroes masked-out gradients before
clipping (``mask_gradients``) and keeps masked-out elements bit-identical in masked steps.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from forgetlab.data.collate import Span, encode
from forgetlab.data.mllmu import load_training
from forgetlab.data.schema import Sample, forget_split, retain_split
from forgetlab.dist.shard import Shard
from forgetlab.importance import Estimator, fisher_importance
from forgetlab.masks import Mask, MaskError, importance_ratio_mask
from forgetlab.models.groups import is_linear_weight, params_in

MaskGroups = Literal["vision", "language", "both"]
MASK_GROUP_NAMES: tuple[str, ...] = ("vision", "language", "both")


def samples_digest(samples: Sequence[Sample]) -> str:
    """SHA-256 of the sorted ``(id, modality, question, answer, image digest)`` tuples of ``samples``."""
    rows = sorted(
        (
            s.person_id,
            s.modality,
            s.question,
            s.answer,
            hashlib.sha256(s.image.tobytes()).hexdigest() if s.image is not None else "",
        )
        for s in samples
    )
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def mask_params(model: nn.Module, groups: str, linear_only: bool = False) -> dict[str, set[str]]:
    """Parameter names to mask per module group (``vision``/``language``) for a ``groups`` choice."""
    if groups not in MASK_GROUP_NAMES:
        raise ValueError(f"unknown mask groups {groups!r}; choose one of {list(MASK_GROUP_NAMES)}")
    wanted = ("vision", "language") if groups == "both" else (groups,)
    out = {g: params_in(model, g) for g in wanted}
    if linear_only:
        out = {g: {n for n in names if is_linear_weight(model, n)} for g, names in out.items()}
    out = {g: names for g, names in out.items() if names}
    if not out:
        what = "nn.Linear weights" if linear_only else "parameters"
        raise ValueError(f"{type(model).__name__} has no {what} in mask group(s) {groups!r}")
    return out


def preserve_sets(forget: Sequence[Sample], retain: Sequence[Sample]) -> dict[str, list[Sample]]:
    """``forget_vqa``, ``retain_vqa`` and ``qa_all`` (text QA of forget + retain people) from two splits."""
    return {
        "forget_vqa": [s for s in forget if s.modality == "vqa"],
        "retain_vqa": [s for s in retain if s.modality == "vqa"],
        "qa_all": [s for s in (*forget, *retain) if s.modality == "qa"],
    }


def _n_terms(n: int, estimator: str, batch_size: int) -> int:
    return n if estimator == "example" else math.ceil(n / batch_size)


@dataclass
class GroupImportance:
    """I_f and I_p per masked parameter, the parameter names per group, and the data sets used."""

    forget: dict[str, torch.Tensor]
    preserve: dict[str, torch.Tensor]
    groups: dict[str, set[str]]
    sets: dict[str, list[Sample]]


#: the paper's preserve set of each module group (sets of :func:`preserve_sets`).
PRESERVE: dict[str, tuple[str, ...]] = {"vision": ("retain_vqa",), "language": ("retain_vqa", "qa_all")}


def group_importance(
    model: nn.Module,
    processor,
    forget: Sequence[Sample],
    retain: Sequence[Sample],
    *,
    groups: MaskGroups = "both",
    estimator: Estimator = "batch",
    linear_only: bool = False,
    span: Span = "full",
    batch_size: int = 8,
    shard: Shard | None = None,
) -> GroupImportance:
    """Fisher importance on forget VQA and on each group's preserve set (see the module doc)."""
    sets = preserve_sets(forget, retain)
    if not sets["forget_vqa"]:
        raise ValueError("the forget split holds no VQA samples: I_f is computed on forget VQA")
    names = mask_params(model, groups, linear_only)
    for g in names:
        if not any(sets[k] for k in PRESERVE[g]):
            raise ValueError(f"the preserve set of the {g} group ({' + '.join(PRESERVE[g])}) is empty")
    pad_id = getattr(processor, "tokenizer", processor).pad_token_id
    encoded = {k: [encode(processor, s, span=span) for s in v] for k, v in sets.items()}
    kw = {"pad_id": pad_id, "estimator": estimator, "batch_size": batch_size, "shard": shard}
    every = set().union(*names.values())
    i_forget = fisher_importance(model, encoded["forget_vqa"], every, **kw)
    # one pass per preserve set; QA holds no image, so only the language group needs it
    parts: dict[str, tuple[dict[str, torch.Tensor], int]] = {}
    if sets["retain_vqa"]:
        n = _n_terms(len(sets["retain_vqa"]), estimator, batch_size)
        parts["retain_vqa"] = (fisher_importance(model, encoded["retain_vqa"], every, **kw), n)
    if "language" in names and sets["qa_all"]:
        n = _n_terms(len(sets["qa_all"]), estimator, batch_size)
        parts["qa_all"] = (fisher_importance(model, encoded["qa_all"], names["language"], **kw), n)
    i_preserve: dict[str, torch.Tensor] = {}
    for g, group_names in names.items():
        used = [parts[k] for k in PRESERVE[g] if k in parts]
        total = sum(count for _, count in used)
        for n in group_names:  # mean over all preserve batches = batch-count-weighted mean of the passes
            i_preserve[n] = sum(imp[n] * (count / total) for imp, count in used)  # type: ignore[assignment]
    return GroupImportance({n: i_forget[n] for n in i_preserve}, i_preserve, names, sets)


def mask_from_samples(
    model: nn.Module,
    processor,
    forget: Sequence[Sample],
    retain: Sequence[Sample],
    *,
    groups: MaskGroups = "both",
    gamma: float = 1.0,
    top_k: float | None = None,
    estimator: Estimator = "batch",
    linear_only: bool = False,
    span: Span = "full",
    batch_size: int = 8,
    shard: Shard | None = None,
) -> Mask:
    """MMUnlearner's mask from the samples of a forget and a retain split (see the module doc)."""
    imp = group_importance(
        model, processor, forget, retain, groups=groups, estimator=estimator,
        linear_only=linear_only, span=span, batch_size=batch_size, shard=shard,
    )  # fmt: skip
    tensors = importance_ratio_mask(imp.forget, imp.preserve, gamma=gamma, top_k=top_k)
    selected = {
        g: round(sum(int(tensors[n].sum()) for n in ns) / max(1, sum(tensors[n].numel() for n in ns)), 4)
        for g, ns in imp.groups.items()
    }
    metadata = {
        "kind": "fisher_ratio",
        "groups": groups,
        "gamma": str(gamma),
        "top_k": "null" if top_k is None else str(top_k),
        "estimator": estimator,
        "linear_only": str(linear_only).lower(),
        "span": span,
        "preserve": json.dumps({g: list(PRESERVE[g]) for g in imp.groups}),
        "sizes": json.dumps({k: len(v) for k, v in imp.sets.items()}),
        "hashes": json.dumps({k: samples_digest(v) for k, v in imp.sets.items()}),
        "fraction_per_group": json.dumps(selected),
    }
    return Mask(tensors, metadata)


def compute_mask(
    model: nn.Module,
    processor,
    data_root: str | Path,
    forget_ratio: int,
    groups: MaskGroups = "both",
    gamma: float = 1.0,
    top_k: float | None = None,
    estimator: Estimator = "batch",
    linear_only: bool = False,
    span: Span = "full",
    batch_size: int = 8,
    shard: Shard | None = None,
) -> Mask:
    """MMUnlearner's mask for the ``forget_<ratio>`` / ``retain_<100-ratio>`` training splits of a benchmark."""
    forget = load_training(data_root, forget_split(forget_ratio))
    retain = load_training(data_root, retain_split(forget_ratio))
    mask = mask_from_samples(
        model, processor, forget, retain, groups=groups, gamma=gamma, top_k=top_k,
        estimator=estimator, linear_only=linear_only, span=span, batch_size=batch_size, shard=shard,
    )  # fmt: skip
    mask.metadata["forget_ratio"] = str(forget_ratio)
    return mask


def attach_mask(model: nn.Module, mask: Mask) -> dict[nn.Parameter, torch.Tensor]:
    """Validate ``mask`` against ``model``, freeze every parameter it does not cover, return param -> mask.

    Raises :class:`MaskError` for unknown names, wrong shapes, an empty mask, or a mask none of
    whose keys is a trainable parameter.
    """
    mask.validate(model)
    named = dict(model.named_parameters())
    out: dict[nn.Parameter, torch.Tensor] = {}
    for name, param in named.items():
        if name in mask.tensors and param.requires_grad:
            out[param] = mask.tensors[name].to(device=param.device, dtype=torch.bool)
        else:
            param.requires_grad_(False)
    if not out:  # pragma: no cover - validate() already refuses this
        raise MaskError("no mask key names a trainable parameter")
    return out
