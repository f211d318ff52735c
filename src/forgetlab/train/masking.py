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

The text-only QA (``qa_all``) is the training rows without an image. In the real MLLMU-Bench
layout every training row has an image, so, as the benchmark's reference code does, it is then
built from ``Full_Set``'s ``Classification_Task.Pure_Text_Questions`` (question -> the correct
option's text) of every person. A preserve set that is still empty, or a mask that selects no
element, is an error naming the cause, never a silently different mask; the mask's metadata
records the sets' sizes and hashes and where the text QA came from (``text_preserve``).

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

from forgetlab.data.collate import Span, encode_cached
from forgetlab.data.mllmu import DataError, load_text_questions, load_training
from forgetlab.data.schema import Sample, forget_split, retain_split
from forgetlab.dist.shard import Shard
from forgetlab.importance import Estimator, fisher_importance
from forgetlab.masks import Mask, MaskError, importance_ratio_mask
from forgetlab.models.groups import is_linear_weight, params_in, tied_parameters

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
        tied = tied_parameters(model)
        out = {g: {n for n in names if is_linear_weight(model, n, tied)} for g, names in out.items()}
    out = {g: names for g, names in out.items() if names}
    if not out:
        what = "nn.Linear weights" if linear_only else "parameters"
        raise ValueError(f"{type(model).__name__} has no {what} in mask group(s) {groups!r}")
    return out


#: where ``qa_all`` comes from when the training rows hold no text-only QA (module doc).
TEXT_PRESERVE_SPLIT = "Full_Set"
TEXT_PRESERVE_SOURCES: tuple[str, str] = (
    "training rows",
    f"{TEXT_PRESERVE_SPLIT} Classification_Task.Pure_Text_Questions",
)


def preserve_sets(
    forget: Sequence[Sample], retain: Sequence[Sample], text_qa: Sequence[Sample] | None = None
) -> dict[str, list[Sample]]:
    """``forget_vqa``, ``retain_vqa`` and ``qa_all`` (text QA of forget + retain people) from two splits.

    ``qa_all`` is the splits' text-only rows; ``text_qa`` (see :func:`text_preserve_questions`) is used
    in their place only when they hold none.
    """
    qa = [s for s in (*forget, *retain) if s.modality == "qa"]
    return {
        "forget_vqa": [s for s in forget if s.modality == "vqa"],
        "retain_vqa": [s for s in retain if s.modality == "vqa"],
        "qa_all": qa or list(text_qa or ()),
    }


def _split_names(*sets: Sequence[Sample]) -> str:
    names = dict.fromkeys(s[0].split for s in sets if s)
    return " and ".join(names) or "the training splits"


def text_preserve_questions(
    data_root: str | Path | None, forget: Sequence[Sample] = (), retain: Sequence[Sample] = ()
) -> list[Sample]:
    """The text preserve set for training rows without text-only QA: ``Full_Set``'s Pure_Text MCQs.

    Each ``Classification_Task.Pure_Text_Questions`` item of every ``Full_Set`` row becomes a
    text-only training sample (question -> the correct option's text), as in MLLMU-Bench's reference
    code. ``forget``/``retain`` only name the splits in error messages. Raises :class:`DataError`,
    naming the missing set, when there is no folder to read or it holds no such question.
    """
    missing = (
        f"the language group's text preserve set (qa_all, text-only QA about all people) is empty: the training "
        f"rows of {_split_names(forget, retain)} hold no text-only QA (every row has an image)"
    )
    if data_root is None:
        raise DataError(
            f"{missing}; pass the benchmark folder (data_root) so that it is built from "
            f"{TEXT_PRESERVE_SOURCES[1]}, or use a vision-only mask"
        )
    try:
        questions = load_text_questions(data_root, TEXT_PRESERVE_SPLIT)
    except DataError as exc:
        raise DataError(f"{missing}, and {TEXT_PRESERVE_SOURCES[1]} cannot be read: {exc}") from None
    if not questions:
        raise DataError(
            f"{missing}, and {Path(data_root) / TEXT_PRESERVE_SPLIT} holds no Classification_Task.Pure_Text_Questions"
        )
    return [
        Sample(q.question, q.answer, "qa", "train", q.person_id, q.split, meta={**q.meta, "source": "Pure_Text_MCQ"})
        for q in questions
    ]


def _n_terms(n: int, estimator: str, batch_size: int) -> int:
    return n if estimator == "example" else math.ceil(n / batch_size)


@dataclass
class GroupImportance:
    """I_f and I_p per masked parameter, the parameter names per group, and the data sets used."""

    forget: dict[str, torch.Tensor]
    preserve: dict[str, torch.Tensor]
    groups: dict[str, set[str]]
    sets: dict[str, list[Sample]]
    #: where ``qa_all`` came from (:data:`TEXT_PRESERVE_SOURCES`); None when no group uses it
    text_source: str | None = None


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
    data_root: str | Path | None = None,
) -> GroupImportance:
    """Fisher importance on forget VQA and on each group's preserve set (see the module doc).

    ``data_root``: the benchmark folder, read for the text preserve set when the training rows hold no
    text-only QA (:func:`text_preserve_questions`); without it that case is an error.
    """
    sets = preserve_sets(forget, retain)
    if not sets["forget_vqa"]:
        raise ValueError("the forget split holds no VQA samples: I_f is computed on forget VQA")
    names = mask_params(model, groups, linear_only)
    text_source = None
    if "language" in names:
        text_source = TEXT_PRESERVE_SOURCES[0]
        if not sets["qa_all"]:  # the real MLLMU-Bench layout: every training row has an image
            sets = preserve_sets(forget, retain, text_preserve_questions(data_root, forget, retain))
            text_source = TEXT_PRESERVE_SOURCES[1]
    for g in names:
        for k in PRESERVE[g]:
            if not sets[k]:
                raise ValueError(
                    f"the preserve set of the {g} group ({' + '.join(PRESERVE[g])}) is incomplete: {k} is empty "
                    f"(the {'retain split holds no VQA samples' if k == 'retain_vqa' else 'splits hold no text QA'})"
                )
    pad_id = getattr(processor, "tokenizer", processor).pad_token_id
    encoded = {k: [encode_cached(processor, s, span=span) for s in v] for k, v in sets.items()}
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
    return GroupImportance({n: i_forget[n] for n in i_preserve}, i_preserve, names, sets, text_source)


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
    data_root: str | Path | None = None,
) -> Mask:
    """MMUnlearner's mask from the samples of a forget and a retain split (see the module doc).

    ``data_root``: see :func:`group_importance`. Raises :class:`MaskError` when the mask selects no element.
    """
    imp = group_importance(
        model, processor, forget, retain, groups=groups, estimator=estimator,
        linear_only=linear_only, span=span, batch_size=batch_size, shard=shard, data_root=data_root,
    )  # fmt: skip
    tensors = importance_ratio_mask(imp.forget, imp.preserve, gamma=gamma, top_k=top_k)
    if not any(bool(t.any()) for t in tensors.values()):
        touched = sum(int((f > 0).sum()) for f in imp.forget.values())
        cause = (
            "the forget importance I_f is zero everywhere (no forget gradient reaches the masked parameters)"
            if not touched
            else f"none of the {touched} elements with I_f > 0 reaches gamma * I_p (gamma={gamma}); lower gamma"
        )
        raise MaskError(f"the {groups} mask selects no element: {cause}")
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
    if imp.text_source is not None:
        metadata["text_preserve"] = imp.text_source
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
        model, processor, forget, retain, groups=groups, gamma=gamma, top_k=top_k, estimator=estimator,
        linear_only=linear_only, span=span, batch_size=batch_size, shard=shard, data_root=data_root,
    )  # fmt: skip
    mask.metadata["forget_ratio"] = str(forget_ratio)
    return mask


def attach_mask(model: nn.Module, mask: Mask) -> dict[nn.Parameter, torch.Tensor]:
    """Validate ``mask`` against ``model``, freeze every parameter it does not cover, return param -> mask.

    Raises :class:`MaskError` for unknown names, wrong shapes, an empty mask, two keys for one tied
    tensor, or a mask none of whose keys is a trainable parameter. Keys naming a tied tensor by another
    of its names are renamed to the one ``named_parameters()`` lists (:meth:`Mask.canonicalize`).
    """
    mask.validate(model)
    mask.canonicalize(model)
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
