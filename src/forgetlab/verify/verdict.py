"""The verdict: is an unlearned model's forgetting reversible, and was it catastrophic? (``docs/verification.md``)

Evidence (a flat dict; a missing, ``None`` or NaN value is "unavailable"):

* behavioural: ``recovery_vqa`` with ``recovery_vqa_lo`` / ``recovery_vqa_hi`` (chance-corrected held-out
  forget-VQA recovery and its 95% interval over people, :mod:`forgetlab.verify.heldout`), ``control_floor``
  (the same attack's held-out recovery on the retrained model), ``quant_recovered`` (the largest share of
  the forgotten accuracy a quantization scheme restored, ``quant_scheme`` which), and the older pooled
  ``recovery_held_out`` (headline of ``held_out_people``, used only without ``recovery_vqa``);
* ``forget_drop`` — accuracy removed by unlearning on the held-out people (the largest forget metric drop);
* representational: ``cka_median``, ``cka_mean``, ``cka_frac_below``, ``pca_similarity`` over the LLM
  decoder blocks, on the forget VQA items with text-only pooling (``qa_*``: the forget QA items);
* the benchmark's retain metrics of the unlearned model and the original's, prefixed ``orig_``.

The rule:

1. **Catastrophic** when a retain metric fell below :data:`RETAIN_MIN_RATIO` × the original's.
2. **Nothing forgotten** when ``forget_drop < MIN_FORGOTTEN``: reversibility is moot.
3. **Behaviour** (:func:`behaviour`): the recovery compared with :data:`RECOVERY_MIN` is
   ``recovery_vqa − control_floor`` when the floor is known, else ``recovery_vqa`` (else
   ``recovery_held_out``). Reversible when its interval lies at or above the threshold, or when
   quantization restored at least :data:`RECOVERY_MIN` of the forgotten accuracy; irreversible when the
   interval lies below it (and quantization did not restore it); **undetermined (within noise)** when the
   interval straddles it.
4. **Representation** (:func:`representation`): intact (reversible) when ``cka_median >= t``, where ``t``
   is *calibrated from data* (:mod:`forgetlab.verify.calibrate`: leave-one-out over a study's models with a
   behavioural label) and passed in as ``calibration``; without a calibration it gives no label.
5. Behaviour decides whenever it gives a label; "within noise" stays undetermined; without behavioural
   evidence the calibrated representation label decides; without either, reversibility is undetermined.
   ``agreement`` is whether the behavioural and the representational labels agree (None when either is
   missing or undetermined).

The label reads e.g. ``"reversible, not catastrophic"``; ``rule`` says which branch decided.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from forgetlab.verify.heldout import within_noise
from forgetlab.verify.relearn import MIN_FORGOTTEN, nothing_forgotten

#: catastrophic when a retain accuracy falls below this fraction of the original's.
RETAIN_MIN_RATIO = 0.7
#: reversible when relearning half the people recovers at least this share on the other half.
RECOVERY_MIN = 0.5
#: a block counts as moved below this CKA (reported as ``cka_frac_below``; not a decision threshold).
CKA_LAYER_MIN = 0.9
#: the label of a recovery whose interval straddles :data:`RECOVERY_MIN`.
NOISE = "undetermined (within noise)"

#: every evidence key :func:`verdict` reads.
EVIDENCE_KEYS: tuple[str, ...] = (
    "recovery_vqa", "recovery_vqa_lo", "recovery_vqa_hi", "control_floor", "quant_recovered", "quant_scheme",
    "recovery_held_out", "forget_drop", "cka_median", "cka_mean", "cka_frac_below", "pca_similarity",
    "retain_vqa_acc", "retain_qa_acc", "orig_retain_vqa_acc", "orig_retain_qa_acc",
)  # fmt: skip
_BLOCK = re.compile(r"language\.\d+$")


@dataclass(frozen=True)
class Calibration:
    """A representation threshold calibrated from data: reversible when ``cka_median >= threshold``."""

    threshold: float
    how: str
    key: str = "cka_median"


@dataclass(frozen=True)
class Verdict:
    """The classification, the branch that decided it, and the evidence it was made from."""

    label: str
    reversible: bool | None
    catastrophic: bool | None
    rule: str
    evidence: dict[str, Any] = field(default_factory=dict)
    behaviour: bool | None = None
    representation: bool | None = None
    agreement: bool | None = None


def _value(evidence: Mapping[str, Any], key: str) -> float | None:
    v = evidence.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


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


def behaviour(ev: Mapping[str, Any], point: bool = False) -> tuple[bool | None, bool, str]:
    """``(reversible, within_noise, rule)`` from the behavioural evidence alone (see the module doc).

    ``point``: judge the recovery's point estimate and ignore its interval (never "within noise"): the
    labels :mod:`forgetlab.verify.calibrate` fits thresholds on, where a noisy label beats none."""
    quant, scheme = _value(ev, "quant_recovered"), ev.get("quant_scheme") or "quantization"
    restored = quant is not None and quant >= RECOVERY_MIN
    qtext = f"; {scheme} restored {quant:.2f} of the forgotten accuracy" if quant is not None else ""
    value, lo, hi = (_value(ev, k) for k in ("recovery_vqa", "recovery_vqa_lo", "recovery_vqa_hi"))
    floor = _value(ev, "control_floor")
    if value is not None:
        shift = floor or 0.0
        ci = None if lo is None or hi is None else (lo - shift, hi - shift)
        what = f"held-out VQA recovery {value:.2f}" + (f" - control floor {floor:.2f}" if floor is not None else "")
        what += f" = {value - shift:.2f}" if floor is not None else ""
        what += f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci is not None else ""
        if restored:
            return True, False, f"{what}{qtext} (>= {RECOVERY_MIN})"
        if not point and within_noise(ci, RECOVERY_MIN):
            return None, True, f"{what}: interval straddles {RECOVERY_MIN}{qtext}"
        ok = (ci[0] if ci is not None and not point else value - shift) >= RECOVERY_MIN
        return ok, False, f"{what} {'>=' if ok else '<'} {RECOVERY_MIN}{qtext}"
    rec = _value(ev, "recovery_held_out")
    if rec is not None:
        ok = rec >= RECOVERY_MIN or restored
        return ok, False, f"held-out recovery {rec:.2f} {'>=' if rec >= RECOVERY_MIN else '<'} {RECOVERY_MIN}{qtext}"
    if restored:
        return True, False, f"no relearning recovery{qtext} (>= {RECOVERY_MIN})"
    return None, False, ""


def representation(ev: Mapping[str, Any], calibration: Calibration | None) -> tuple[bool | None, str]:
    """``(intact, rule)``: the calibrated threshold on ``cka_median`` (None without a calibration or a value)."""
    value = _value(ev, calibration.key if calibration else "cka_median")
    if value is None:
        return None, ""
    if calibration is None:
        return None, f"median LLM CKA {value:.3f} (no calibrated threshold)"
    intact = value >= calibration.threshold
    sign = ">=" if intact else "<"
    return intact, f"median LLM CKA {value:.3f} {sign} {calibration.threshold:.3f} ({calibration.how})"


def verdict(evidence: Mapping[str, Any], calibration: Calibration | None = None) -> Verdict:
    """Classify reversible / irreversible × catastrophic / not from ``evidence`` (see the module doc)."""
    ev = dict(evidence)
    catastrophic, cat_rule = _catastrophic(ev)
    cat_label = {True: "catastrophic", False: "not catastrophic", None: "catastrophe undetermined"}[catastrophic]
    beh, noisy, beh_rule = behaviour(ev)
    rep, rep_rule = representation(ev, calibration)
    agreement = None if beh is None or rep is None else beh == rep
    drop = _value(ev, "forget_drop")
    if drop is not None and nothing_forgotten(drop):
        reversible, rev_label = None, "nothing forgotten"
        rev_rule = f"forget accuracy dropped by {drop:.3f} < {MIN_FORGOTTEN}: nothing to reverse"
        agreement = None
    elif beh is not None:
        reversible, rev_rule = beh, beh_rule
        rev_label = "reversible" if beh else "irreversible"
    elif noisy:
        reversible, rev_label, rev_rule = None, NOISE, beh_rule
    elif rep is not None:
        state = "intact" if rep else "moved"
        reversible, rev_rule = rep, f"no behavioural evidence; representations {state}: {rep_rule}"
        rev_label = "reversible" if rep else "irreversible"
    else:
        reversible = None
        rev_label = "reversibility undetermined (missing recovery_vqa, recovery_held_out and a calibrated cka_median)"
        rev_rule = "no relearning or quantization recovery and no calibrated representation evidence"
    if rep_rule and not rev_rule.startswith("no behavioural"):
        rev_rule += f"; representation: {rep_rule}"
    return Verdict(
        label=f"{rev_label}, {cat_label}",
        reversible=reversible,
        catastrophic=catastrophic,
        rule=f"{rev_rule}; {cat_rule}",
        evidence=ev,
        behaviour=beh,
        representation=rep,
        agreement=agreement,
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
    vqa = summary.get("recovery_vqa")
    if vqa:  # the chance-corrected held-out forget-VQA recovery and its interval
        ci = vqa.get("ci") or [None, None]
        out |= {"recovery_vqa": vqa.get("value"), "recovery_vqa_lo": ci[0], "recovery_vqa_hi": ci[1]}
    return out


def evidence_from_quantization(result: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """``quant_recovered`` (the largest ``recovered_share`` over the schemes) and ``quant_scheme``."""
    shares = {k: v.get("recovered_share") for k, v in (result or {}).items()}
    shares = {k: v for k, v in shares.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    if not shares:
        return {"quant_recovered": None, "quant_scheme": None}
    scheme = max(shares, key=lambda k: shares[k])
    return {"quant_recovered": shares[scheme], "quant_scheme": scheme}


def evidence_from_forget_probe(by_group: Mapping[str, Mapping[str, Any]], model: str = "unlearned") -> dict:
    """Representation evidence from one pooling's per-group comparisons (``results[pooling]``): the
    forget VQA items (``forget_vqa``; TOFU, text only: the forget QA items) unprefixed, the forget QA
    items prefixed ``qa_``. Groups the probe could not compare (too few items) give ``None``."""
    empty = dict.fromkeys(("cka_median", "cka_mean", "cka_frac_below", "pca_similarity"))

    def of(group: str) -> dict:
        entry = (by_group.get(group) or {}).get(model)
        return evidence_from_probe(entry) if entry else dict(empty)

    main = "forget_vqa" if "forget_vqa" in by_group else "forget_qa"
    return (
        of(main)
        | {"probe_group": main if main in by_group else None}
        | {f"qa_{k}": v for k, v in of("forget_qa").items()}
    )


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
