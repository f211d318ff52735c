"""The pure pieces of the relearning attack: recovery, the people split, the relearning data."""

from __future__ import annotations

import dataclasses
import math

import pytest

from forgetlab.data.mllmu import split_ids
from forgetlab.verify.relearn import (
    MIN_FORGOTTEN,
    forget_people,
    forgotten,
    half_metrics,
    recoveries,
    recovery,
    relearn_samples,
    split_people,
)


@pytest.mark.parametrize(
    ("orig", "unl", "rel", "expected"),
    [
        (0.9, 0.3, 0.6, 0.5),  # half of the 0.6 removed comes back
        (0.9, 0.3, 0.9, 1.0),
        (0.9, 0.3, 0.3, 0.0),
        (0.9, 0.3, 1.0, 7 / 6),  # overshoot is kept, not clipped
        (0.9, 0.3, 0.15, -0.25),  # relearning made it worse
        (0.35, 0.3, 0.4, 2.0),  # gap exactly MIN_FORGOTTEN: defined
    ],
)
def test_recovery_values(orig: float, unl: float, rel: float, expected: float) -> None:
    assert recovery(orig, unl, rel) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("orig", "unl", "rel"),
    [
        (0.5, 0.5, 0.9),  # nothing forgotten: no division by 0
        (0.5, 0.5 - MIN_FORGOTTEN / 2, 0.9),  # forgotten less than MIN_FORGOTTEN: no division by ~0
        (0.3, 0.6, 0.9),  # unlearning *raised* accuracy
        (None, 0.3, 0.6),
        (0.9, None, 0.6),
        (0.9, 0.3, None),
        (math.nan, 0.3, 0.6),
        (0.9, 0.3, math.inf),
    ],
)
def test_recovery_undefined_is_none_never_nan(orig, unl, rel) -> None:
    assert recovery(orig, unl, rel) is None


def test_recoveries_headline_pools_the_lost_accuracy() -> None:
    def part(v: float | None, q: float | None, t: float | None) -> dict:
        return {"forget_vqa_acc": v, "forget_qa_acc": q, "test_vqa_acc": t}

    retain = {"retain_vqa_acc": 0.8, "retain_qa_acc": 0.8}
    orig = {"relearned_people": part(0.9, 0.9, 0.9), "held_out_people": part(0.9, 0.5, 0.9), "retain": retain}
    unl = {"relearned_people": part(0.1, 0.1, 0.1), "held_out_people": part(0.1, 0.5, 0.5), "retain": retain}
    rel = {"relearned_people": part(0.9, 0.5, 0.1), "held_out_people": part(0.5, 0.9, None), "retain": retain}
    out = recoveries(orig, unl, rel)
    assert out["relearned_people"] == pytest.approx({"forget_vqa_acc": 1.0, "forget_qa_acc": 0.5, "test_vqa_acc": 0.0})
    assert out["held_out_people"] == {"forget_vqa_acc": pytest.approx(0.5), "forget_qa_acc": None, "test_vqa_acc": None}
    # relearned: (0.8 + 0.4 + 0.0) / (0.8 + 0.8 + 0.8); held out: only forget VQA is defined
    assert out["headline"] == pytest.approx({"relearned_people": 0.5, "held_out_people": 0.5})
    # pooled, not averaged: a 0.05 drop that did not come back barely moves a 0.6 one that did
    unl["held_out_people"] = part(0.1, 0.45, 0.5)
    rel["held_out_people"] = part(0.9, 0.45, None)
    out = recoveries(orig, unl, rel)
    assert out["held_out_people"]["forget_qa_acc"] == pytest.approx(0.0)
    assert out["headline"]["held_out_people"] == pytest.approx(0.8 / 0.85)
    assert out["retain"] == {"retain_vqa_acc": None, "retain_qa_acc": None}


def test_split_people_is_seeded_disjoint_and_complete() -> None:
    ids = [f"p{i}" for i in range(10)]
    a = split_people(ids, 0.5, seed=0)
    assert a == split_people(ids, 0.5, seed=0)
    assert a != split_people(ids, 0.5, seed=1)
    assert len(a["relearned_people"]) == len(a["held_out_people"]) == 5
    assert sorted(a["relearned_people"] + a["held_out_people"], key=ids.index) == ids
    assert len(split_people(ids, 0.3, seed=0)["relearned_people"]) == 3


@pytest.mark.parametrize(("n", "fraction"), [(10, 0.0), (10, 1.0), (10, 0.02), (1, 0.5)])
def test_split_people_refuses_an_empty_half(n: int, fraction: float) -> None:
    with pytest.raises(ValueError, match="both halves must be non-empty"):
        split_people([f"p{i}" for i in range(n)], fraction, seed=0)


def test_recoveries_and_forgotten_take_the_metric_names_from_the_views() -> None:
    """TOFU's views: answer probability and ROUGE-L per half, retain probability; counts (``*_n``) are no metric."""

    def view(p: float, r: float, keep: float) -> dict:
        half = {"forget_prob": p, "forget_rougeL_recall": r}
        return {"relearned_people": half, "held_out_people": half, "retain": {"retain_prob": keep, "retain_n": 40}}

    orig, unl, rel = view(0.9, 0.8, 0.9), view(0.1, 0.4, 0.5), view(0.5, 0.6, 0.7)
    out = recoveries(orig, unl, rel)
    assert out["held_out_people"] == pytest.approx({"forget_prob": 0.5, "forget_rougeL_recall": 0.5})
    assert out["retain"] == pytest.approx({"retain_prob": 0.5})
    assert out["headline"]["held_out_people"] == pytest.approx((0.4 + 0.2) / (0.8 + 0.4))
    assert forgotten(orig, unl)["held_out_people"] == pytest.approx({"forget_prob": 0.8, "forget_rougeL_recall": 0.4})


def test_half_metrics_per_benchmark() -> None:
    """Each benchmark's forget metrics over the evaluation rows of some people (:data:`RELEARN_METRICS`)."""
    mcq = [
        {"set": s, "id": i, "modality": m, "task": "classification", "hit": h}
        for s, i, m, h in [("forget", "a", "vqa", True), ("forget", "a", "vqa", False), ("forget", "b", "vqa", False),
                           ("forget", "a", "qa", True), ("test", "a", "vqa", True)]
    ]  # fmt: skip
    assert half_metrics("mllmu", mcq, ["a"]) == {"forget_vqa_acc": 0.5, "forget_vqa_n": 2, "forget_qa_acc": 1.0,
                                                 "forget_qa_n": 1, "test_vqa_acc": 1.0, "test_vqa_n": 1}  # fmt: skip
    assert half_metrics("clear", mcq, ["a", "b"]) == {"forget_vqa_acc": pytest.approx(1 / 3), "forget_vqa_n": 3}
    tofu = [
        {"set": "forget", "id": "a", "prob": 0.2, "rougeL_recall": 0.5},
        {"set": "forget", "id": "a", "prob": 0.4, "rougeL_recall": None},
        {"set": "forget", "id": "b", "prob": 0.9, "rougeL_recall": 1.0},
        {"set": "retain", "id": "a", "prob": 0.9, "rougeL_recall": 1.0},
    ]
    assert half_metrics("tofu", tofu, ["a"]) == pytest.approx({"forget_prob": 0.3, "forget_rougeL_recall": 0.5})
    assert half_metrics("tofu", tofu, ["c"]) == {"forget_prob": None, "forget_rougeL_recall": None}


def test_relearning_data_is_budget_matched(bench, bench_data) -> None:
    forgotten_people = forget_people(bench_data)
    assert forgotten_people == split_ids(bench, "forget_10")
    people = split_people(forgotten_people, 0.5, seed=0)["relearned_people"]
    forget = relearn_samples(bench_data, people, source="forget", modality="vqa", seed=0)
    assert forget and {s.person_id for s in forget} == set(people) and {s.modality for s in forget} == {"vqa"}
    retain = relearn_samples(bench_data, people, source="retain", modality="both", seed=0)
    both = relearn_samples(bench_data, people, source="forget", modality="both", seed=0)
    assert len(retain) == len(both) and not {s.person_id for s in retain} & set(forgotten_people)
    unrelated = relearn_samples(bench_data, people, source="unrelated", modality="vqa", seed=0)
    benchmark_people = set(split_ids(bench, "Full_Set")) | set(split_ids(bench, "Retain_Set"))
    assert len(unrelated) == len(forget)  # the unrelated pool's VQA items (perception images), cycled if needed
    assert {id(s) for s in unrelated} <= {id(s) for s in bench_data.probe_pools["unrelated"]}
    assert {s.modality for s in unrelated} == {"vqa"} and not {s.person_id for s in unrelated} & benchmark_people
    with pytest.raises(ValueError, match="unknown source 'nope'"):
        relearn_samples(bench_data, people, source="nope", modality="vqa", seed=0)
    bare = dataclasses.replace(bench_data, probe_pools={})
    with pytest.raises(ValueError, match=r"source='unrelated': no 'vqa' training samples .*\(unrelated items\)"):
        relearn_samples(bare, people, source="unrelated", modality="vqa", seed=0)
