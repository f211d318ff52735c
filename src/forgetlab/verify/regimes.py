"""The source paper's two regimes of forgetting, as runs the demo reproduces (``docs/verification.md``).

* **single request, low learning rate**: one gradient-ascent run over the whole forget set with a
  small step. The paper finds this forgetting *reversible*: relearning part of the forgotten
  data brings the rest back, and the representations barely move.
* **continual requests, high learning rate**: the forget set unlearned as many sequential
  requests with a large step. The paper finds this *irreversible and catastrophic*: retain
  accuracy collapses, CKA / PCA similarity drop across layers, relearning recovers much less.

Each regime is data (a study's ``verify.regimes``: :class:`forgetlab.study.config.RegimeSpec`);
:func:`run_regime` produces its model folder (an
``unlearn.json`` marks it finished, so a rerun skips it) and a study then verifies it with
:func:`forgetlab.verify.assess.verify_model` like any other model. Run at several seeds
(``verify.regime_seeds``), a regime is pooled over them by :func:`pool_seeds`: intervals over people and
seeds, each seed's verdict, and one verdict from the pooled evidence.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from forgetlab.io import write_json
from forgetlab.train.unlearn_config import UnlearnConfig


def run_regime(
    name: str,
    requests: int,
    config: UnlearnConfig,
    original: Path,
    data: Path,
    forget_ratio: int,
    out: Path,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Unlearn ``original`` with ``config`` in ``requests`` sequential requests into ``out`` (skipped when
    the regime ``name`` already finished there); returns the model folder."""
    from forgetlab.train.unlearn import unlearn
    from forgetlab.verify.continual import continual_unlearn

    out = Path(out)
    model_dir = out if requests == 1 else out / "model"
    marker = model_dir / "unlearn.json"
    wanted = {"regime": name, "regime_config": json.loads(json.dumps(config.resolved())), "requests": requests}
    if marker.exists() and all(json.loads(marker.read_text()).get(k) == v for k, v in wanted.items()):
        return model_dir
    if requests == 1:
        unlearn(original, data, out, config, progress=progress)
    else:
        continual_unlearn(
            original, data, forget_ratio, out, config, requests, eval_each=False, progress=progress
        )
    info = json.loads(marker.read_text())
    write_json(marker, info | wanted)
    return model_dir


def as_expected(verdict: str, expected: str) -> bool:
    """Whether a measured verdict has the reversibility the source paper reports (the part before any comma:
    ``"irreversible, catastrophic"`` matches ``"irreversible"``)."""
    return verdict.split(",")[0] == expected.split(",")[0]


def pool_seeds(
    runs: Mapping[str, Mapping[str, Any]],
    answers: Mapping[str, Sequence[Mapping[str, Any]]],
    verified: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """One regime run at several seeds (``verify.regime_seeds``), pooled.

    ``runs``: the regime's metrics rows by run name (each verified one with its ``evidence`` and
    ``recovery_vqa``); ``answers``: each run's saved answers; ``verified``: every verified row of the study
    (the representation threshold is calibrated on those of *other* settings: this regime's seeds are all
    left out). Returns ``{"runs", "seeds", "reported", "ci"}`` (report-part accuracies averaged over the seeds,
    95% intervals over people and seeds), ``"verdicts"`` (each run's) and ``"counts"`` (of their first part),
    then from the pooled evidence (the seeds' mean; the held-out recovery pooled over (seed, person) units,
    :func:`forgetlab.verify.heldout.pooled_recovery_vqa`): ``"recovery_vqa"``, ``"verdict"``,
    ``"verdict_rule"``, ``"calibration"``, ``"agreement"`` and, where the source paper reports one,
    ``"as_expected"``.
    """
    from forgetlab.eval.stats import bootstrap_ci, mean_over
    from forgetlab.study.config import NOT_REPORTED
    from forgetlab.verify.calibrate import fit_on
    from forgetlab.verify.heldout import pooled_recovery_vqa
    from forgetlab.verify.verdict import EVIDENCE_KEYS, verdict

    names = list(runs)
    if not names:
        raise ValueError("pool_seeds needs at least one run of the regime")
    first = runs[names[0]]
    out: dict[str, Any] = {k: first.get(k) for k in ("title", "method", "lr", "requests", "expected")}
    out |= {"runs": names, "seeds": [runs[k].get("seed") for k in names]}
    rows = [list(answers.get(k) or []) for k in names]
    if all(rows):
        reported = mean_over(rows)
        out |= {"reported": reported, "ci": bootstrap_ci(rows, list(reported))}
    labels = {k: runs[k].get("verdict") for k in names}
    out["verdicts"] = labels
    out["counts"] = dict(Counter(str(v).split(",")[0] for v in labels.values() if v))
    done = [k for k in names if isinstance(runs[k].get("evidence"), Mapping)]
    if not done:
        return out
    evidence: dict[str, Any] = {}
    for key in EVIDENCE_KEYS:
        values = [runs[k]["evidence"].get(key) for k in done]
        numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) == len(values) and all(math.isfinite(v) for v in numbers):
            evidence[key] = sum(numbers) / len(numbers)
        elif values and all(v == values[0] for v in values):
            evidence[key] = values[0]  # e.g. the quantization scheme
    recovery = pooled_recovery_vqa([runs[k].get("recovery_vqa") or {} for k in done])
    for key in ("recovery_vqa", "recovery_vqa_lo", "recovery_vqa_hi"):
        evidence.pop(key, None)
    if recovery is not None and recovery.get("value") is not None:
        evidence["recovery_vqa"] = recovery["value"]
        if recovery.get("ci"):
            evidence["recovery_vqa_lo"], evidence["recovery_vqa_hi"] = recovery["ci"]
    others = {k: r["evidence"] for k, r in verified.items() if k not in runs and isinstance(r.get("evidence"), Mapping)}
    cal = fit_on(others)
    v = verdict(evidence, cal)
    out |= {
        "recovery_vqa": recovery,
        "evidence": evidence,
        "verdict": v.label,
        "verdict_rule": v.rule,
        "agreement": v.agreement,
        "calibration": None if cal is None else {"threshold": cal.threshold, "how": cal.how, "key": cal.key},
    }
    if out.get("expected") not in (None, NOT_REPORTED):
        out["as_expected"] = as_expected(v.label, str(out["expected"]))
    return out
