"""Representation thresholds calibrated from data, and the agreement of the two kinds of evidence.

A fixed CKA threshold ("representations intact when median CKA >= 0.95") is a guess. Here it is
learnt from the models of a study whose forgetting has a *behavioural* label (reversible or
irreversible from the relearning and quantization attacks, :func:`forgetlab.verify.verdict.behaviour`).
The labels it fits on are the behaviour's *point* estimates (recovery above the control floor ≥ 0.5,
its interval ignored): a model whose verdict is "within noise" still informs the threshold, while its
own agreement stays null (agreement is only counted where the interval decides the behaviour):

* :func:`best_threshold`: the threshold ``t`` on median LLM CKA (forget items, text pooling) whose rule
  "reversible when CKA >= t" classifies the labelled models best; candidates are the midpoints between
  consecutive distinct values (and one step beyond each end); ties go to the candidate farthest from
  its nearest model (the middle of the widest separating gap), then to the lower one. It needs both
  labels among the models, else there is nothing to calibrate.
* :func:`calibrate`: **leave-one-out**: each model's threshold is fitted on the *other* labelled models
  (:func:`fit_on`), so its own behaviour never sets the line it is judged by.
* :func:`recalibrate`: a study's verified rows re-judged with their thresholds (``verdict``,
  ``verdict_rule``, ``agreement``, ``calibration``), and the agreement rate over the models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from forgetlab.verify.verdict import Calibration, behaviour, verdict

KEY = "cka_median"


def best_threshold(points: Sequence[tuple[float, bool]]) -> tuple[float, float] | None:
    """``(threshold, training accuracy)`` separating ``(value, reversible)`` points by ``value >= t``, or
    None without both labels (see the module doc for candidates and ties)."""
    labels = {r for _, r in points}
    if labels != {True, False}:
        return None
    if any(not math.isfinite(v) for v, _ in points):
        raise ValueError("best_threshold needs finite values")
    values = sorted({v for v, _ in points})
    step = (values[-1] - values[0]) or 1.0
    candidates = [values[0] - step] + [(a + b) / 2 for a, b in zip(values, values[1:], strict=False)]
    candidates.append(values[-1] + step)

    def score(t: float) -> tuple[float, float, float]:
        correct = sum((v >= t) == r for v, r in points) / len(points)
        margin = min(abs(v - t) for v, _ in points)
        return correct, margin, -t

    best = max(candidates, key=score)
    return best, score(best)[0]


def _labelled(models: Mapping[str, Mapping[str, Any]], key: str) -> dict[str, tuple[float, bool]]:
    out = {}
    for name, ev in models.items():
        value = ev.get(key)
        label, _, _ = behaviour(ev, point=True)
        if label is not None and isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = (float(value), label)
    return out


def fit_on(others: Mapping[str, Mapping[str, Any]], key: str = KEY) -> Calibration | None:
    """The threshold fitted on ``others``' evidence (``{name: evidence}``), for a model that is not among them;
    None when they do not hold both behavioural labels."""
    points = list(_labelled(others, key).values())
    fit = best_threshold(points)
    if fit is None:
        return None
    t, acc = fit
    n_rev = sum(r for _, r in points)
    how = (f"calibrated leave-one-out on {len(points)} other models ({n_rev} reversible, "
           f"{len(points) - n_rev} irreversible by behaviour), training accuracy {acc:.2f}")  # fmt: skip
    return Calibration(threshold=round(t, 4), how=how, key=key)


def calibrate(models: Mapping[str, Mapping[str, Any]], key: str = KEY) -> dict[str, Calibration | None]:
    """Leave-one-out thresholds: ``{model: Calibration fitted on the other models' evidence}`` (:func:`fit_on`;
    None where the others do not hold both behavioural labels). ``models`` maps a name to its evidence dict."""
    return {name: fit_on({k: ev for k, ev in models.items() if k != name}, key) for name in models}


def recalibrate(rows: MutableMapping[str, MutableMapping[str, Any]]) -> dict[str, Any]:
    """Re-judge each verified row (one with ``evidence``) with its leave-one-out threshold, in place.

    Each row gets ``verdict``, ``verdict_rule``, ``agreement`` and ``calibration`` (``{"threshold", "how",
    "key"}`` or None). Returns the study summary ``{"agreement_rate", "agreeing", "compared", "models"}``
    (the rate is None when no model has both labels).
    """
    verified = {k: r for k, r in rows.items() if isinstance(r.get("evidence"), Mapping)}
    thresholds = calibrate({k: r["evidence"] for k, r in verified.items()})
    for name, row in verified.items():
        cal = thresholds[name]
        v = verdict(row["evidence"], cal)
        about = None if cal is None else {"threshold": cal.threshold, "how": cal.how, "key": cal.key}
        row |= {"verdict": v.label, "verdict_rule": v.rule, "agreement": v.agreement, "behaviour": v.behaviour,
                "representation": v.representation, "calibration": about}  # fmt: skip
    return agreement_summary({k: r.get("agreement") for k, r in verified.items()})


def agreement_summary(agreement: Mapping[str, bool | None]) -> dict[str, Any]:
    """The share of models whose behavioural and representational labels agree (over those with both)."""
    compared = {k: v for k, v in agreement.items() if v is not None}
    agreeing = sum(compared.values())
    return {
        "agreement_rate": round(agreeing / len(compared), 4) if compared else None,
        "agreeing": agreeing,
        "compared": len(compared),
        "models": dict(agreement),
    }
