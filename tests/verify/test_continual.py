"""Continual unlearning: the request split, and N = 2 requests end to end on a tiny LLaVA."""

from __future__ import annotations

import json

import pytest

from forgetlab.data.mllmu import split_ids
from forgetlab.models.load import load
from forgetlab.train.unlearn import UnlearnConfig
from forgetlab.verify.continual import SET_METRICS, continual_unlearn, split_requests


def test_split_requests_is_seeded_balanced_and_complete() -> None:
    ids = [f"p{i}" for i in range(7)]
    chunks = split_requests(ids, 3, seed=0)
    assert sorted(len(c) for c in chunks) == [2, 2, 3]
    assert sorted(p for c in chunks for p in c) == sorted(ids)
    assert chunks == split_requests(ids, 3, seed=0) and chunks != split_requests(ids, 3, seed=1)
    assert [len(c) for c in split_requests(ids, 7, seed=0)] == [1] * 7


@pytest.mark.parametrize(("requests", "match"), [(8, "requests=8 exceeds the 7 forget people"), (0, ">= 1")])
def test_split_requests_refuses_bad_counts(requests: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_requests([f"p{i}" for i in range(7)], requests, seed=0)


def test_more_requests_than_people_fails_before_loading(bench, tmp_path) -> None:
    with pytest.raises(ValueError, match="requests=3 exceeds the 2 forget people"):
        continual_unlearn(tmp_path / "no-model", bench, 10, tmp_path / "o", UnlearnConfig(), requests=3)


def test_two_requests_give_two_rows(tiny_model, bench, tmp_path) -> None:
    out = tmp_path / "continual"
    config = UnlearnConfig(method="ga_diff", lr=1e-3, batch_size=4, max_steps=2, forget_ratio=5)
    rows = continual_unlearn(tiny_model, bench, 10, out, config, requests=2)
    assert [r["request"] for r in rows] == [1, 2] and all(r["steps"] == 2 for r in rows)
    people = split_ids(bench, "forget_10")
    assert sorted(p for r in rows for p in r["people"]) == sorted(people) and all(len(r["people"]) == 1 for r in rows)
    for r in rows:
        assert all(isinstance(r[m], float) for m in SET_METRICS)
        assert r["done_vqa_acc"] is not None and r["current_vqa_acc"] is not None
    assert rows[0]["pending_vqa_acc"] is not None and rows[1]["pending_vqa_acc"] is None  # nobody left
    assert rows[1]["done_vqa_acc"] == rows[1]["forget_vqa_acc"]  # all requested = the whole forget split
    assert [json.loads(line) for line in (out / "continual.jsonl").read_text().splitlines()] == rows
    summary = json.loads((out / "model" / "unlearn.json").read_text())
    assert summary["config"]["forget_ratio"] == 10 and summary["continual"]["requests"] == 2
    load(out / "model")  # a loadable model folder


def test_masked_method_recomputes_its_mask_per_request(tiny_model, bench, tmp_path) -> None:
    config = UnlearnConfig(method="salun", lr=1e-3, batch_size=4, max_steps=1, method_args={"saliency_fraction": 0.1})
    rows = continual_unlearn(
        tiny_model, bench, 10, tmp_path / "c", config, requests=2, eval_each=False, save_model=False
    )
    assert all(r["mask_fraction"] == pytest.approx(0.1, abs=0.01) for r in rows)
    assert "retain_vqa_acc" not in rows[0] and "retain_vqa_acc" in rows[1]  # eval_each=False: only the last
    with pytest.raises(ValueError, match="recomputes the mask for each request"):
        continual_unlearn(tiny_model, bench, 10, tmp_path / "d", config.model_copy(update={"mask": tmp_path}), 2)
