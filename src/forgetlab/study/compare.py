"""The fair comparison of a study's groups: seeds and intervals of each chosen setting, the gold
(retrained) model's yardsticks, utility at matched forgetting, and the claims the intervals support.

Called once all runs are evaluated (:func:`forgetlab.study.pipeline.run_study`); everything here reads
the runs' ``eval.json`` rows and ``eval_rows.jsonl`` answers, nothing trains or evaluates a model.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from forgetlab.eval.stats import (
    at_matched,
    bootstrap_ci,
    correct_probs,
    forget_quality,
    interval_claim,
    mean_over,
    privleak,
)
from forgetlab.study.sweep import ROWS

#: the membership attack PrivLeak reads: the loss attack on the forget set's image questions
PRIVLEAK_ATTACK: tuple[str, str] = ("vqa", "loss")


def read_rows(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / ROWS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def utility(m: Mapping[str, Any], kept: Sequence[str]) -> float | None:
    """The mean of the ``kept`` metrics (None if any is missing)."""
    values = [m.get(k) for k in kept]
    return None if any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type]


def summarise_seeds(runs: Sequence[Sequence[dict]], seeds: Sequence[int]) -> dict[str, Any]:
    """``seeds``, ``reported`` (report-part accuracies averaged over seeds) and their 95% ``ci``."""
    reported = mean_over(runs)
    return {"seeds": list(seeds), "reported": reported, "ci": bootstrap_ci(runs, list(reported))}


def point_interval(rows: Sequence[dict], metrics: Sequence[str]) -> dict[str, list[float]]:
    """One run's 95% intervals over people (report part) of ``metrics``: a point of a trade-off curve."""
    return bootstrap_ci([rows], metrics) if rows else {}


def auc(mia: Mapping[str, Any] | None) -> float | None:
    modality, attack = PRIVLEAK_ATTACK
    return ((mia or {}).get(modality) or {}).get(attack)


def against_gold(
    rows: Sequence[dict], reported: Mapping[str, float], mia: Mapping | None, gold: Mapping[str, Any]
) -> dict[str, Any]:
    """A model against the retrained one: ``forget_quality`` (KS p-value on forget VQA's correct-option
    probabilities), ``privleak`` (% , from the MIA loss attack on forget VQA) and ``gold_gap`` per metric."""
    gap = {k: round(v - gold["reported"][k], 4) for k, v in reported.items() if k in gold["reported"]}
    return {
        "forget_quality": forget_quality(correct_probs(rows), correct_probs(gold["rows"])),
        "privleak": privleak(auc(mia), auc(gold.get("mia"))),
        "gold_gap": gap,
    }


def matched(grid: Mapping[str, Mapping[str, Any]], metric: str, target: float, kept: Sequence[str]) -> float | None:
    """A group's utility at ``metric == target``, interpolated along its learning rates (report part)."""
    curve = []
    for m in grid.values():
        rep = m.get("reported") or m
        u = utility(rep, kept)
        if rep.get(metric) is not None and u is not None:
            curve.append((rep[metric], u))
    return at_matched(curve, target)


def claims(chosen: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Every pairwise comparison of chosen settings (same arm) on ``metrics``: ``holds`` when the two 95%
    intervals do not overlap, with the direction; the rest are "not supported by the intervals"."""
    out = []
    for (a, ma), (b, mb) in itertools.combinations(sorted(chosen.items()), 2):
        if ma.get("arm") != mb.get("arm"):
            continue
        for k in metrics:
            ca, cb = (ma.get("ci") or {}).get(k), (mb.get("ci") or {}).get(k)
            if ca is None or cb is None:
                continue
            sign = interval_claim(ca, cb)
            first, second = (a, b) if sign != "<" else (b, a)
            text = f"{first} > {second} on {k}" if sign != "~" else f"{a} ~ {b} on {k}"
            out.append({"claim": text, "metric": k, "a": a, "b": b, "ci_a": ca, "ci_b": cb, "holds": sign != "~",
                        "ablation": ma.get("method") == mb.get("method")})  # fmt: skip
    return out


__all__ = ["against_gold", "claims", "matched", "point_interval", "read_rows", "summarise_seeds", "utility"]
