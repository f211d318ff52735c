"""A regime run at several seeds, pooled: intervals over people and seeds, each seed's verdict, one pooled
verdict whose representation threshold is calibrated on the *other* settings only."""

from __future__ import annotations

import pytest

from forgetlab.study.config import StudyConfig
from forgetlab.verify.heldout import recovery_vqa, tally
from forgetlab.verify.regimes import pool_seeds

RETAIN_OK = {"retain_vqa_acc": 0.8, "orig_retain_vqa_acc": 0.8}
PEOPLE = ["p0", "p1", "p2", "p3"]


def _rows(per_person: dict[str, list[int]], set_name: str = "forget") -> list[dict]:
    return [{"set": set_name, "modality": "vqa", "task": "classification", "id": p, "question": f"q{i}", "hit": h}
            for p, hits in per_person.items() for i, h in enumerate(hits)]  # fmt: skip


def _run(seed: int, relearned_hits: int, cka: float) -> dict:
    """A verified seed of one regime: every held-out person at ``relearned_hits`` of 4 after relearning."""
    original = tally(_rows({p: [1, 1, 1, 1] for p in PEOPLE}))
    unlearned = tally(_rows({p: [1, 0, 0, 0] for p in PEOPLE}))
    relearned = tally(_rows({p: [1] * relearned_hits + [0] * (4 - relearned_hits) for p in PEOPLE}))
    rec = recovery_vqa(original, unlearned, relearned, PEOPLE, 0.25, n=200)
    evidence = {"recovery_vqa": rec["value"], "recovery_vqa_lo": rec["ci"][0], "recovery_vqa_hi": rec["ci"][1],
                "cka_median": cka, "quant_scheme": "4bit", **RETAIN_OK}  # fmt: skip
    label = "irreversible, not catastrophic" if rec["value"] < 0.5 else "reversible, not catastrophic"
    return {"title": "GA, one request, low LR", "method": "ga", "lr": 1e-5, "requests": 1, "expected": "reversible",
            "seed": seed, "evidence": evidence, "recovery_vqa": rec, "verdict": label}  # fmt: skip


def _other(recovery: float, cka: float) -> dict:
    return {"evidence": {"recovery_vqa": recovery, "recovery_vqa_lo": recovery - 0.1,
                         "recovery_vqa_hi": recovery + 0.1, "cka_median": cka, **RETAIN_OK}}  # fmt: skip


def test_pooled_regime_over_three_seeds() -> None:
    # held-out recoveries 0, 0 (1/4: chance) and 1/3 (2/4): relearned pooled 4/12 -> (1/3 - 1/4) / (3/4) = 1/9
    runs = {"one": _run(0, 1, 0.90), "one-s1": _run(1, 1, 0.92), "one-s2": _run(2, 2, 0.94)}
    answers = {k: _rows({p: [1, 0] if k == "one" else [1, 1] for p in PEOPLE}, "test") for k in runs}
    others = {"rev1": _other(0.9, 0.99), "rev2": _other(0.8, 0.97), "irr1": _other(0.1, 0.6), "irr2": _other(0.2, 0.7)}
    pooled = pool_seeds(runs, answers, others | runs)
    assert pooled["runs"] == ["one", "one-s1", "one-s2"] and pooled["seeds"] == [0, 1, 2]
    assert pooled["reported"]["test_vqa_acc"] == pytest.approx((0.5 + 1 + 1) / 3, abs=1e-4)
    lo, hi = pooled["ci"]["test_vqa_acc"]
    assert lo == pytest.approx(0.5) and hi == pytest.approx(1.0)  # a resample of seeds: 3x seed 0 .. 3x the others
    assert pooled["counts"] == {"irreversible": 3}
    assert pooled["recovery_vqa"]["value"] == pytest.approx(1 / 9, abs=1e-4)
    assert 0 <= pooled["recovery_vqa"]["ci"][0] < 1 / 9 < pooled["recovery_vqa"]["ci"][1] < 0.5
    assert pooled["recovery_vqa"]["n_units"] == 12 and pooled["recovery_vqa"]["n_runs"] == 3
    assert pooled["evidence"]["cka_median"] == pytest.approx(0.92)  # the seeds' mean
    assert pooled["evidence"]["quant_scheme"] == "4bit"
    # the threshold is fitted on the four other settings (between 0.7 and 0.97), never on this regime's seeds
    assert "on 4 other models" in pooled["calibration"]["how"]
    assert 0.7 < pooled["calibration"]["threshold"] < 0.97
    assert pooled["verdict"].startswith("irreversible") and pooled["as_expected"] is False
    # irreversible by behaviour, but CKA 0.92 is above the line (0.835): the representations look intact
    assert pooled["calibration"]["threshold"] == pytest.approx((0.7 + 0.97) / 2)
    assert pooled["agreement"] is False


def test_a_regime_without_verification_is_pooled_on_its_answers_only() -> None:
    runs = {"one": {"title": "t", "seed": 0}, "one-s1": {"title": "t", "seed": 1}}
    answers = {"one": _rows({"p0": [1, 1]}, "test"), "one-s1": _rows({"p0": [0, 1]}, "test")}
    pooled = pool_seeds(runs, answers, {})
    assert pooled["reported"]["test_vqa_acc"] == pytest.approx(0.75) and pooled["counts"] == {}
    assert "verdict" not in pooled and "recovery_vqa" not in pooled
    with pytest.raises(ValueError, match="at least one run"):
        pool_seeds({}, {}, {})


def test_regime_runs_are_named_by_seed() -> None:
    study = StudyConfig(name="s", benchmark={"kind": "embedded", "people": 20}, schedule={"seed": 4}, verify={
        "regime_seeds": 3, "regimes": [{"name": "one", "title": "one request", "lr": 1e-5},
                                       {"name": "seq", "title": "two", "lr": 3e-4, "requests": 2}]})  # fmt: skip
    runs = study.regime_runs()
    assert list(runs) == ["one", "one-s5", "one-s6", "seq", "seq-s5", "seq-s6"]
    assert [seed for _, seed in runs.values()] == [4, 5, 6, 4, 5, 6]
    regime, seed = runs["seq-s6"]
    assert regime.name == "seq" and study.regime_config(regime, seed).seed == 6
    assert study.regime_config(regime).seed == 4  # without a seed: the schedule's
