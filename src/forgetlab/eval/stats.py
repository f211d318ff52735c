"""Statistics of a fair comparison: the selection/report split, bootstrap intervals, matched forgetting,
Forget Quality and PrivLeak.

Everything works on the per-question rows :func:`forgetlab.eval.runner.evaluate` returns (``set``, ``id``
= person, ``modality``, ``task``, ``question``, ``hit``, ``scores``), so a metric can be recomputed on any
subset of questions, people or seeds without running a model again.

* **Selection apart from what is reported** (:func:`part_of`). Learning rates are chosen on the
  *selection* part and never reported: half of each forget person's questions (by a hash of the
  question, so the same questions for every model) and half of the retain and real-world people.
  Everything else (the other half, ``test``, perception, world knowledge) is the *report* part.
* **Intervals** (:func:`bootstrap_ci`): 95% percentile bootstrap, resampling people (within each
  evaluation set) and seeds with replacement, as the accuracy of a study is a mean over both.
* **Matched forgetting** (:func:`at_matched`): a method's utility interpolated along its LR curve at
  a target forget accuracy.
* **Forget Quality** (:func:`forget_quality`): TOFU's two-sample Kolmogorov-Smirnov p-value, here on the
  per-question probability of the correct option (softmax over the options' log-likelihoods) of the
  unlearned model against the retrained (retain-only) model; high = indistinguishable from retraining.
* **PrivLeak** (:func:`privleak`): MUSE's ``(AUC_unlearned - AUC_retrained) / AUC_retrained`` of a
  membership-inference attack, in percent; 0 = as private as retraining.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import ks_2samp

#: evaluation sets split by question within each person (forget) or by person (retain, real world)
SPLIT_BY_QUESTION: frozenset[str] = frozenset({"forget"})
SPLIT_BY_PERSON: frozenset[str] = frozenset({"retain", "realworld", "retain_text"})
PARTS: tuple[str, ...] = ("selection", "report")


def _h(*key: object) -> str:
    return hashlib.sha256(repr(key).encode()).hexdigest()


def part_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """``"selection"`` or ``"report"`` for each row (see the module doc); a pure function of the rows' keys.

    Forget set: each person's distinct questions ranked by hash, the first half (rounded down) for
    selection. Retain and real-world sets: the people ranked by hash, the first half for selection.
    Other sets are reported only.
    """
    questions: dict[tuple[str, str], list[str]] = defaultdict(list)
    people: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r["set"] in SPLIT_BY_QUESTION:
            qs = questions[(r["set"], r["id"])]
            if r["question"] not in qs:
                qs.append(r["question"])
        elif r["set"] in SPLIT_BY_PERSON:
            people[r["set"]].add(r["id"])
    chosen_q = {
        (key, q)
        for key, qs in questions.items()
        for q in sorted(qs, key=lambda q: _h(key, q))[: len(qs) // 2]
    }
    chosen_p = {(s, p) for s, ps in people.items() for p in sorted(ps, key=lambda p: _h(s, p))[: len(ps) // 2]}
    out = []
    for r in rows:
        if r["set"] in SPLIT_BY_QUESTION:
            sel = ((r["set"], r["id"]), r["question"]) in chosen_q
        else:
            sel = (r["set"], r["id"]) in chosen_p
        out.append("selection" if sel else "report")
    return out


def _mcq(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if r.get("task") == "classification" and r.get("hit") is not None]


def accuracies(rows: Sequence[Mapping[str, Any]], part: str | None = None) -> dict[str, float]:
    """``{set}_{modality}_acc`` over the MCQ rows (of one ``part`` of :func:`part_of`, or all)."""
    keep = part_of(rows) if part else None
    hits: dict[str, list[float]] = defaultdict(list)
    for i, r in enumerate(rows):
        if r.get("task") != "classification" or r.get("hit") is None or (keep and keep[i] != part):
            continue
        hits[f"{r['set']}_{r['modality']}_acc"].append(float(r["hit"]))
    return {k: float(np.mean(v)) for k, v in sorted(hits.items())}


def bootstrap_ci(
    runs: Sequence[Sequence[Mapping[str, Any]]],
    metrics: Sequence[str],
    *,
    part: str | None = "report",
    n: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """95% percentile intervals of ``{set}_{modality}_acc`` metrics over people and seeds.

    ``runs``: one row list per seed (the same questions, one model per seed). Each resample draws the
    seeds with replacement and, for each metric, its set's people with replacement; the accuracy is the
    mean over every drawn (seed, person) pair's questions. A metric with no rows is left out; each metric's
    draws are seeded by ``seed`` and its name, so its interval does not depend on the other metrics asked.
    """
    per_seed = []
    for rows in runs:
        keep = part_of(rows) if part else [None] * len(rows)
        table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r, k in zip(rows, keep, strict=True):
            if r.get("task") == "classification" and r.get("hit") is not None and (part is None or k == part):
                table[f"{r['set']}_{r['modality']}_acc"][r["id"]].append(float(r["hit"]))
        per_seed.append(table)
    out: dict[str, list[float]] = {}
    for metric in metrics:
        people = sorted(set().union(*(t[metric].keys() for t in per_seed)))
        if not people:
            continue
        rng = np.random.default_rng([seed, *metric.encode()])  # one stream per metric: the others asked do not matter
        # sums[s, p], counts[s, p]: per seed and person
        sums = np.array([[sum(t[metric].get(p, [])) for p in people] for t in per_seed])
        counts = np.array([[len(t[metric].get(p, [])) for p in people] for t in per_seed])
        s_idx = rng.integers(0, len(per_seed), size=(n, len(per_seed)))
        p_idx = rng.integers(0, len(people), size=(n, len(people)))
        draws = np.empty(n)
        for b in range(n):
            sub_s, sub_c = sums[s_idx[b]][:, p_idx[b]], counts[s_idx[b]][:, p_idx[b]]
            draws[b] = sub_s.sum() / sub_c.sum() if sub_c.sum() else np.nan
        lo, hi = np.nanpercentile(draws, [50 * (1 - level), 50 * (1 + level)])
        out[metric] = [round(float(lo), 4), round(float(hi), 4)]
    return out


def mean_over(runs: Sequence[Sequence[Mapping[str, Any]]], part: str | None = "report") -> dict[str, float]:
    """Each accuracy of :func:`accuracies` averaged over the runs (seeds)."""
    each = [accuracies(rows, part) for rows in runs]
    keys = sorted(set().union(*each))
    return {k: round(float(np.mean([e[k] for e in each if k in e])), 4) for k in keys}


def interval_claim(a: Sequence[float], b: Sequence[float]) -> str:
    """``">"``, ``"<"`` when interval ``a`` lies wholly above or below ``b``, else ``"~"`` (not supported)."""
    if a[0] > b[1]:
        return ">"
    if a[1] < b[0]:
        return "<"
    return "~"


def at_matched(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """Utility at forget accuracy ``target``, linearly interpolated along ``curve`` = ``[(forget, utility)]``
    (one point per learning rate); None when no two neighbouring points bracket ``target`` (and no point
    sits on it): extrapolating would claim what was not measured."""
    points = sorted(curve)
    for f, u in points:
        if math.isclose(f, target, abs_tol=1e-9):
            return u
    for (f0, u0), (f1, u1) in zip(points, points[1:], strict=False):
        if f0 < target < f1:
            return u0 + (u1 - u0) * (target - f0) / (f1 - f0)
    return None


def correct_probs(rows: Iterable[Mapping[str, Any]], set_name: str = "forget", modality: str = "vqa") -> list[float]:
    """Per MCQ question of ``set_name``/``modality``: the probability of the correct option, the softmax of
    the options' log-likelihood scores (the ``loglik`` protocol's ``scores``)."""
    out = []
    for r in _mcq(rows):
        if r["set"] != set_name or r["modality"] != modality or not r.get("scores"):
            continue
        letters = list(r["scores"])
        s = np.array([r["scores"][k] for k in letters], dtype=float)
        p = np.exp(s - s.max())
        out.append(float(p[letters.index(r["correct"])] / p.sum()))
    return out


def forget_quality(model_probs: Sequence[float], gold_probs: Sequence[float]) -> float | None:
    """TOFU's Forget Quality: the two-sample KS test's p-value between the two models' per-question
    probabilities (None without data). 1 = same distribution as the retrained model."""
    if not model_probs or not gold_probs:
        return None
    return float(ks_2samp(model_probs, gold_probs).pvalue)


def privleak(auc_model: float | None, auc_gold: float | None) -> float | None:
    """MUSE's PrivLeak in percent: ``100 * (AUC - AUC_gold) / AUC_gold`` (None when either is missing)."""
    if auc_model is None or auc_gold is None or auc_gold == 0:
        return None
    return round(100 * (auc_model - auc_gold) / auc_gold, 2)


__all__ = [
    "PARTS", "accuracies", "at_matched", "bootstrap_ci", "correct_probs", "forget_quality", "interval_claim",
    "mean_over", "part_of", "privleak",
]  # fmt: skip
