"""Membership inference on a model: forget-set examples (members) vs holdout examples.

Definitions: ``docs/reference.md#mia`` and ``#privleak`` (§5.6, §5.7).

:func:`mia_report` runs one batched forward pass per batch over both sets (answer-only labels,
pads ignored), keeps per example the answer tokens' log-probs and the mean / std of log p under
the full next-token distribution (for Min-K%++), and scores every example with LOSS, ZLib,
Min-K% (k = 0.4), Min-K%++ and — when a reference model is given — the Reference attack
(scores from :mod:`forgetlab.eval.mia`; higher = more member-like). ROC-AUC is computed per
attack, separately for image-text (VQA) and text-only (QA) inputs, and PrivLeak relative to a
retain model's AUCs when those are given.

**Holdout on the embedded benchmark.** MIA needs non-members drawn from the same distribution
as the forget set but never trained on. ``Test_Set`` questions about forget people are *not*
non-members (they ask about the same trained facts with new images), and retain people are
members of the training set too. The embedded benchmark therefore has a ``Holdout_Set``: people
who are in no other split and not in ``ft_Data``, written in the training format (same
templates, same attribute pools). :func:`benchmark_mia_sets` returns the forget people's training
pairs as members and those as non-members. For a benchmark without one (the real MLLMU-Bench),
:func:`holdout_people` picks people to exclude from fine-tuning (seeded, disjoint from every
forget split) and ``benchmark_mia_sets(..., holdout_ids)`` uses their ``ft_Data`` pairs — only
valid when the model was fine-tuned without those IDs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from forgetlab.data.collate import IGNORE, collate, length_order
from forgetlab.data.schema import FORGET_RATIOS, FT_SPLIT, HOLDOUT_SPLIT, Sample, forget_split
from forgetlab.eval.mia import mia_auc, mia_scores, privleak
from forgetlab.eval.mia import token_stats_from_logits as _token_stats
from forgetlab.models.inputs import forward_kwargs, to_model
from forgetlab.probe.capture import encode_probe, pad_token_id

ATTACKS: tuple[str, ...] = ("loss", "zlib", "mink", "minkpp", "reference")
MODALITIES: tuple[str, ...] = ("vqa", "qa")


@dataclass
class TokenStats:
    """Answer-token statistics of one example (natural-log probabilities, float64)."""

    logprobs: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray


@torch.inference_mode()
def answer_token_stats(
    model: nn.Module, processor, samples: Sequence[Sample], *, batch_size: int = 8
) -> list[TokenStats]:
    """Per-example answer-token log p(target), μ and σ of log p over the vocabulary.

    One forward pass per batch of ``batch_size`` examples of similar length (right padding); the result
    does not depend on the batch composition and comes in the samples' order. Raises when an example has
    no answer token.
    """
    if not samples:
        return []
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    examples = encode_probe(processor, samples)
    pad_id = pad_token_id(processor)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[TokenStats | None] = [None] * len(examples)
    order = length_order(examples)
    try:
        for start in range(0, len(examples), batch_size):
            index = order[start : start + batch_size]
            batch = collate([examples[i] for i in index], pad_id)
            kwargs = to_model(model, forward_kwargs(model, batch))
            logits = model(**kwargs, use_cache=False).logits[:, :-1]
            targets = batch["labels"][:, 1:].to(device)
            mask = targets != IGNORE
            counts = mask.sum(dim=1).tolist()
            for i, c in zip(index, counts, strict=True):
                if c == 0:
                    raise ValueError(f"example {i} has no answer token to score: {samples[i]!r:.80}")
            lp, mu, sigma = _token_stats(logits[mask], targets[mask])
            bounds = np.cumsum([0, *counts])
            arrays = [t.cpu().numpy().astype(np.float64) for t in (lp, mu, sigma)]
            for row, i in enumerate(index):
                a, b = bounds[row], bounds[row + 1]
                out[i] = TokenStats(arrays[0][a:b], arrays[1][a:b], arrays[2][a:b])
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def attack_scores(
    stats: Sequence[TokenStats],
    answers: Sequence[str],
    ref_stats: Sequence[TokenStats] | None = None,
    *,
    k: float = 0.4,
) -> dict[str, np.ndarray]:
    """``{attack: per-example scores}`` for every attack the inputs allow."""
    lps = [s.logprobs for s in stats]
    scores = {
        "loss": mia_scores("loss", lps),
        "zlib": mia_scores("zlib", lps, texts=answers),
        "mink": mia_scores("mink", lps, k=k),
        "minkpp": mia_scores("minkpp", lps, mu=[s.mu for s in stats], sigma=[s.sigma for s in stats], k=k),
    }
    if ref_stats is not None:
        scores["reference"] = mia_scores("reference", lps, ref_logprobs=[s.logprobs for s in ref_stats])
    return scores


def _retain_aucs(retain_auc: Mapping | None, modality: str) -> Mapping[str, float] | None:
    if retain_auc is None:
        return None
    by = retain_auc.get("by_modality", retain_auc)  # a whole report or {modality: {attack: auc}}
    entry = by.get(modality)
    if entry is None:
        return None
    return entry.get("auc", entry)


def mia_report(
    model: nn.Module,
    processor,
    members: Sequence[Sample],
    nonmembers: Sequence[Sample],
    ref_model: nn.Module | None = None,
    *,
    ref_processor=None,
    retain_auc: Mapping | None = None,
    k: float = 0.4,
    batch_size: int = 8,
    keep_scores: bool = True,
) -> dict:
    """Membership-inference AUCs of ``model`` on members vs non-members, per modality.

    Args:
        model, processor: the model under test (e.g. the unlearned model) and its processor.
        members: forget-set examples (trained on, then unlearned).
        nonmembers: holdout examples from the same distribution, never trained on.
        ref_model: optional reference model for the Reference attack (e.g. the model before
            fine-tuning, or a retain-only model); ``ref_processor`` defaults to ``processor``.
        retain_auc: AUCs of a model trained without the forget set, as ``{modality: {attack:
            auc}}`` or that model's own :func:`mia_report`; enables PrivLeak.
        k: Min-K% / Min-K%++ fraction.
        keep_scores: include the per-example scores in the report.

    Returns:
        ``{"k", "attacks", "by_modality": {"vqa"|"qa": {"n_members", "n_nonmembers", "auc":
        {attack: AUC}, "privleak": {attack: %} | None, "scores": {"members": {...},
        "nonmembers": {...}}}}, "skipped": {modality: reason}}``. AUC ≈ 1: the forget set is
        still recognisable; ≈ 0.5: indistinguishable from the holdout.
    """
    if not members or not nonmembers:
        raise ValueError(f"need members and non-members; got {len(members)} and {len(nonmembers)}")
    report: dict = {"k": k, "attacks": [], "by_modality": {}, "skipped": {}}
    for modality in MODALITIES:
        mem = [s for s in members if s.modality == modality]
        non = [s for s in nonmembers if s.modality == modality]
        if not mem or not non:
            if mem or non:
                report["skipped"][modality] = f"{len(mem)} members, {len(non)} non-members"
            continue
        everything = [*mem, *non]
        stats = answer_token_stats(model, processor, everything, batch_size=batch_size)
        ref_stats = None
        if ref_model is not None:
            ref_stats = answer_token_stats(ref_model, ref_processor or processor, everything, batch_size=batch_size)
        scores = attack_scores(stats, [s.answer for s in everything], ref_stats, k=k)
        n = len(mem)
        entry: dict = {
            "n_members": n,
            "n_nonmembers": len(non),
            "auc": {a: mia_auc(v[:n], v[n:]) for a, v in scores.items()},
            "privleak": None,
        }
        retain = _retain_aucs(retain_auc, modality)
        if retain is not None:
            entry["privleak"] = {}
            for attack, auc in entry["auc"].items():
                try:
                    entry["privleak"][attack] = privleak(auc, retain[attack]) if attack in retain else None
                except ValueError:
                    entry["privleak"][attack] = None  # AUC_retain = 1: undefined
        if keep_scores:
            entry["scores"] = {
                "members": {a: v[:n].tolist() for a, v in scores.items()},
                "nonmembers": {a: v[n:].tolist() for a, v in scores.items()},
            }
        report["by_modality"][modality] = entry
        report["attacks"] = list(scores)
    if not report["by_modality"]:
        raise ValueError("no modality has both members and non-members")
    return report


# --------------------------------------------------------------------------- benchmark holdout


def holdout_people(root: str | Path, n: int = 2, seed: int = 0) -> list[str]:
    """``n`` fictitious people to exclude from fine-tuning, to serve as the MIA holdout.

    Chosen with a seeded permutation among the ``Full_Set`` people who are in no forget split
    (so forget sets of every ratio keep their members), returned sorted.
    """
    from forgetlab.data.mllmu import available_splits, split_ids

    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    forget: set[str] = set()
    present = set(available_splits(root))
    for r in FORGET_RATIOS:
        if forget_split(r) in present:
            forget |= set(split_ids(root, forget_split(r)))
    candidates = sorted(set(split_ids(root, "Full_Set")) - forget)
    if n > len(candidates):
        raise ValueError(f"only {len(candidates)} people are outside every forget split; asked for {n}")
    order = np.random.default_rng([seed, 7919]).permutation(len(candidates))
    return sorted(candidates[i] for i in order[:n])


def benchmark_mia_sets(
    root: str | Path, forget_ratio: int, holdout_ids: Sequence[str] | None = None
) -> tuple[list[Sample], list[Sample]]:
    """(members, non-members): the forget people's training pairs and never-trained people's pairs.

    Non-members are ``Holdout_Set`` when ``holdout_ids`` is None (the embedded benchmark), else
    the ``ft_Data`` pairs of ``holdout_ids`` — valid only for a model fine-tuned *without* them
    (see :func:`holdout_people`).
    """
    from forgetlab.data.mllmu import DataError, available_splits, load_training

    members = load_training(root, forget_split(forget_ratio))
    if holdout_ids is None:
        if HOLDOUT_SPLIT not in available_splits(root):
            raise DataError(f"{root} has no {HOLDOUT_SPLIT} split: pass holdout_ids (people excluded from fine-tuning)")
        nonmembers = load_training(root, HOLDOUT_SPLIT)
        overlap = {s.person_id for s in nonmembers} & {s.person_id for s in members}
        if overlap:
            raise DataError(f"{HOLDOUT_SPLIT} people {sorted(overlap)} are also in {forget_split(forget_ratio)}")
        return members, nonmembers
    held = set(holdout_ids)
    overlap = held & {s.person_id for s in members}
    if overlap:
        raise ValueError(f"holdout people {sorted(overlap)} are in {forget_split(forget_ratio)}")
    nonmembers = [s for s in load_training(root, FT_SPLIT) if s.person_id in held]
    missing = held - {s.person_id for s in nonmembers}
    if missing:
        raise ValueError(f"holdout people {sorted(missing)} have no rows in {FT_SPLIT}")
    return members, nonmembers


def mia_sets(data) -> tuple[list[Sample], list[Sample], str]:
    """(members, non-members, what the non-members are) for any :class:`~forgetlab.benchmarks.BenchmarkData`.

    Members are the forget set's training pairs. Non-members, best first:

    * MLLMU-Bench layout with ``Holdout_Set`` (the embedded benchmark): never-trained people;
    * TOFU with ``holdoutXX``: never-trained authors of the same size as the forget set;
    * MLLMU-Bench without a holdout (the real download): ``Test_Set`` items of the forget people
      (renderings and questions never trained on). That is *example*-level membership, weaker than
      people-level: pass ``holdout_ids`` to :func:`benchmark_mia_sets` for a model fine-tuned
      without some people;
    * CLEAR: the forget people's faces with their *perturbed* captions (CLEAR has no never-trained
      people): the same images, text never trained on.
    """
    from forgetlab.data import clear, tofu
    from forgetlab.data.mllmu import DataError, available_splits

    members = list(data.forget)
    if data.name == "mllmu":
        if HOLDOUT_SPLIT in available_splits(data.root):
            return (*benchmark_mia_sets(data.root, data.forget_percent), "Holdout_Set: never-trained people")
        people = {s.person_id for s in members}
        test = [s for s in data.eval_sets.get("test", []) if s.person_id in people]
        nonmembers = [s for s in test if s.task == "generation"] or [s for s in test if s.task == "classification"]
        if not nonmembers:
            raise DataError(f"{data.root}: no Holdout_Set and no Test_Set items of the forget people for MIA")
        return members, nonmembers, "Test_Set items of the forget people (example-level: no never-trained people)"
    if data.name == "tofu":
        config = tofu.holdout_config(data.forget_percent)
        if config not in tofu.configs(data.root):
            raise DataError(f"{data.root}: TOFU config {config} (never-trained authors) is missing; MIA needs it")
        return members, tofu.load_qa(data.root, config), f"{config}: never-trained authors"
    if data.name == "clear":
        config = f"{clear.forget_config(data.forget_percent)}_perturbed"
        nonmembers = clear.perturbed_caption_items(data.root, config)
        return members, nonmembers, f"{config}: the forget faces with perturbed captions"
    raise ValueError(f"unknown benchmark {data.name!r}")
