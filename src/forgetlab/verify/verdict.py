"""The verdict: is an unlearned model's forgetting reversible, and was it catastrophic? (``docs/verification.md``)

Evidence (a flat dict; a missing, ``None`` or NaN value is "unavailable"):

* ``recovery_held_out`` — relearning recovery on the *held-out* forgotten people
  (:mod:`forgetlab.verify.relearn`, headline of ``held_out_people``);
* ``forget_drop`` — accuracy removed by unlearning on those people (original − unlearned, the
  largest over the forget metrics);
* ``cka_median``, ``cka_mean`` — debiased CKA to the original over the LLM decoder blocks,
  and ``cka_frac_below`` — the fraction of those blocks with CKA < :data:`CKA_LAYER_MIN`;
* ``pca_similarity`` — mean |cos| of the first principal directions over the same blocks;
* the benchmark's retain metrics of the unlearned model (``retain_vqa_acc``, ``retain_qa_acc`` on
  MLLMU-Bench; ``retain_prob``... on TOFU) and the original's, prefixed ``orig_``.

The rule (thresholds are the named constants below):

1. **Catastrophic** when a retain metric (e.g. retain VQA or retain QA accuracy) fell below
   :data:`RETAIN_MIN_RATIO` × the original's (checked on whichever ratios are available;
   undetermined when none is).
2. **Nothing forgotten** when ``forget_drop < MIN_FORGOTTEN``: reversibility is moot and the
   label says so.
3. **Reversible** when ``recovery_held_out >= RECOVERY_MIN``; irreversible when it is lower.
   Relearning is the behavioural test, so it decides whenever it is available.
4. Without a recovery, the representations decide: reversible when the LLM is essentially
   unchanged — ``cka_median >= CKA_MEDIAN_MIN``, and (when available)
   ``cka_frac_below <= CKA_FRAC_BELOW_MAX`` and ``pca_similarity >= PCA_MIN`` — since knowledge
   whose representations were not moved is presumed still there; irreversible otherwise.
5. Without either, reversibility is undetermined and the label names what is missing.

The label reads e.g. ``"reversible, not catastrophic"``; ``rule`` says which branch decided.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from forgetlab.verify.relearn import MIN_FORGOTTEN, nothing_forgotten

#: catastrophic when a retain accuracy falls below this fraction of the original's.
RETAIN_MIN_RATIO = 0.7
#: reversible when relearning half the people recovers at least this share on the other half.
RECOVERY_MIN = 0.5
#: representation fallback: median LLM-block CKA at least this ...
CKA_MEDIAN_MIN = 0.95
#: ... a block counts as moved below this CKA ...
CKA_LAYER_MIN = 0.9
#: ... at most this fraction of blocks moved ...
CKA_FRAC_BELOW_MAX = 0.25
#: ... and the first principal directions still aligned (mean |cos|) at least this.
PCA_MIN = 0.8

#: every evidence key :func:`verdict` reads.
EVIDENCE_KEYS: tuple[str, ...] = (
    "recovery_held_out", "forget_drop", "cka_median", "cka_mean", "cka_frac_below", "pca_similarity",
    "retain_vqa_acc", "retain_qa_acc", "orig_retain_vqa_acc", "orig_retain_qa_acc",
)  # fmt: skip
_BLOCK = re.compile(r"language\.\d+$")


@dataclass(frozen=True)
class Verdict:
    """The classification, the branch that decided it, and the evidence it was made from."""

    label: str
    reversible: bool | None
    catastrophic: bool | None
    rule: str
    evidence: dict[str, Any] = field(default_factory=dict)


def _value(evidence: Mapping[str, Any], key: str) -> float | None:
    v = evidence.get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _catastrophic(ev: Mapping[str, Any]) -> tuple[bool | None, str]:
    ratios = {}
    for key in (k for k in ev if k.startswith("retain_")):
        now, orig = _value(ev, key), _value(ev, f"orig_{key}")
        if now is not None and orig is not None and orig > 0:
            ratios[key.removeprefix("retain_").removesuffix("_acc")] = now / orig
    if not ratios:
        return None, "catastrophe undetermined (no retain metric with its orig_ value)"
    low = {m: r for m, r in ratios.items() if r < RETAIN_MIN_RATIO}
    shown = ", ".join(f"retain {m} {r:.2f}x original" for m, r in ratios.items())
    if low:
        return True, f"catastrophic: {shown} (< {RETAIN_MIN_RATIO})"
    return False, f"not catastrophic: {shown} (>= {RETAIN_MIN_RATIO})"


def _representation(ev: Mapping[str, Any]) -> tuple[bool | None, str]:
    median = _value(ev, "cka_median")
    if median is None:
        return None, ""
    frac, pca = _value(ev, "cka_frac_below"), _value(ev, "pca_similarity")
    checks = [(median >= CKA_MEDIAN_MIN, f"median LLM CKA {median:.3f} (need >= {CKA_MEDIAN_MIN})")]
    if frac is not None:
        text = f"{frac:.0%} of blocks below {CKA_LAYER_MIN} (max {CKA_FRAC_BELOW_MAX:.0%})"
        checks.append((frac <= CKA_FRAC_BELOW_MAX, text))
    if pca is not None:
        checks.append((pca >= PCA_MIN, f"PC1 similarity {pca:.2f} (need >= {PCA_MIN})"))
    intact = all(ok for ok, _ in checks)
    what = "; ".join(text for _, text in checks)
    return intact, f"no recovery available; representations {'intact' if intact else 'moved'}: {what}"


def verdict(evidence: Mapping[str, Any]) -> Verdict:
    """Classify reversible / irreversible × catastrophic / not from ``evidence`` (see the module doc)."""
    ev = dict(evidence)
    catastrophic, cat_rule = _catastrophic(ev)
    cat_label = {True: "catastrophic", False: "not catastrophic", None: "catastrophe undetermined"}[catastrophic]

    drop, rec = _value(ev, "forget_drop"), _value(ev, "recovery_held_out")
    if drop is not None and nothing_forgotten(drop):
        reversible, rev_label = None, "nothing forgotten"
        rev_rule = f"forget accuracy dropped by {drop:.3f} < {MIN_FORGOTTEN}: nothing to reverse"
    elif rec is not None:
        reversible = rec >= RECOVERY_MIN
        rev_label = "reversible" if reversible else "irreversible"
        rev_rule = f"held-out recovery {rec:.2f} {'>=' if reversible else '<'} {RECOVERY_MIN}"
    else:
        reversible, rev_rule = _representation(ev)
        if reversible is None:
            rev_label = "reversibility undetermined (missing recovery_held_out and cka_median)"
            rev_rule = "no relearning recovery and no CKA evidence"
        else:
            rev_label = "reversible" if reversible else "irreversible"
    return Verdict(
        label=f"{rev_label}, {cat_label}",
        reversible=reversible,
        catastrophic=catastrophic,
        rule=f"{rev_rule}; {cat_rule}",
        evidence=ev,
    )


# --------------------------------------------------------------------------- evidence from outputs


def evidence_from_relearn(summary: Mapping[str, Any]) -> dict[str, float | None]:
    """Recovery, forgetting and retain accuracies from a ``relearn.json`` summary."""
    metrics, half = summary["metrics"], "held_out_people"
    drops = [v for v in summary["forgotten"][half].values() if v is not None]
    out: dict[str, float | None] = {
        "recovery_held_out": summary["recovery"]["headline"][half],
        "forget_drop": max(drops) if drops else None,
    }
    for key in (k for k in metrics["original"]["retain"] if not k.endswith("_n")):
        out[key] = metrics["unlearned"]["retain"].get(key)
        out[f"orig_{key}"] = metrics["original"]["retain"].get(key)
    return out


def evidence_from_probe(result: Mapping[str, Sequence[Any]]) -> dict[str, float | None]:
    """CKA and PCA summaries over the LLM decoder blocks (``language.<i>``) of one probe comparison.

    ``result`` is one model's entry of ``probe.json`` (``results[pooling][group][model]``), as
    returned by :func:`forgetlab.probe.compare.compare` (undefined values are ``None``/NaN).
    """

    def finite(key: str) -> list[float]:
        return [
            float(v)
            for layer, v in zip(result["layers"], result[key], strict=True)
            if _BLOCK.match(layer) and v is not None and math.isfinite(v)
        ]

    cka, pca = finite("cka"), finite("pca_similarity")
    return {
        "cka_median": statistics.median(cka) if cka else None,
        "cka_mean": statistics.fmean(cka) if cka else None,
        "cka_frac_below": sum(c < CKA_LAYER_MIN for c in cka) / len(cka) if cka else None,
        "pca_similarity": statistics.fmean(pca) if pca else None,
    }
