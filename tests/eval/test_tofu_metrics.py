"""TOFU's metrics: hand-computed truth ratio / probability, answer log-probs against explicit loops,
and the whole evaluation on a tiny causal LM over a TOFU-format fixture."""

from __future__ import annotations

import math

import pytest
import torch

from bench_fixtures import FORGET, QA_PER_AUTHOR, write_tofu
from forgetlab.data.collate import encode
from forgetlab.data.schema import Sample
from forgetlab.data.tofu import eval_sets, load_qa
from forgetlab.eval.tofu import (
    answer_logprobs,
    evaluate_tofu,
    normalised_probability,
    rouge_l_recall,
    truth_ratio,
    truth_ratio_stat,
)
from forgetlab.models.tiny_lm import build_tiny_causal_lm


def test_hand_computed_values() -> None:
    r = truth_ratio(math.log(0.5), [math.log(0.25), math.log(0.25)])
    assert r == pytest.approx(0.5)
    assert truth_ratio(math.log(0.5), [math.log(0.125), math.log(0.5)]) == pytest.approx(0.5)  # geometric mean
    assert truth_ratio_stat([0.5, 2.0], forget=True) == pytest.approx(0.5)
    assert truth_ratio_stat([0.5, 2.0], forget=False) == pytest.approx(0.25)
    assert truth_ratio_stat([], forget=True) is None
    assert normalised_probability(math.log(0.5), [math.log(0.25), math.log(0.25)]) == pytest.approx(0.5)
    assert normalised_probability(-1000.0, [-1000.0]) == pytest.approx(0.5)  # no underflow
    assert rouge_l_recall("the cat sat on the mat today", "the cat sat") == pytest.approx(1.0)
    assert rouge_l_recall("a dog", "the cat sat") == 0.0


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = write_tofu(tmp_path_factory.mktemp("tofu") / "TOFU", percent=5)
    texts = [t for s in load_qa(root, "full") for t in (s.question, s.answer)] + ["equals y z w"]
    model, tok = build_tiny_causal_lm(texts, hidden=32, layers=2, heads=2)
    return root, model.eval(), tok


def test_answer_logprobs_match_explicit_loops(setting) -> None:
    _, model, tok = setting
    pairs = [("What is fact 1 about this author?", "Fact 1 is x1."), ("Who?", "Fact 2 equals y.")]
    got = answer_logprobs(model, tok, pairs, batch_size=2)
    for (q, a), value in zip(pairs, got, strict=True):
        e = encode(tok, Sample(q, a, "qa", "generation", "", ""), span="answer")
        with torch.no_grad():
            logits = model(input_ids=e.input_ids[None]).logits[0].double()
        lps = [torch.log_softmax(logits[t - 1], -1)[e.input_ids[t]] for t in range(1, len(e.input_ids))
               if e.labels[t] != -100]  # fmt: skip
        assert value == pytest.approx(float(sum(lps) / len(lps)), abs=1e-4)


def test_evaluate_tofu(setting) -> None:
    root, model, tok = setting
    sets = eval_sets(root, 5)
    metrics, rows = evaluate_tofu(model, tok, sets, max_new_tokens=4, batch_size=8)
    for name in ("forget", "retain", "real_authors", "world_facts"):
        assert 0 < metrics[f"{name}_prob"] <= 1
        assert 0 <= metrics[f"{name}_truth_ratio"] <= 1 and metrics[f"{name}_truth_ratio_mean"] > 0
        assert 0 <= metrics[f"{name}_rougeL_recall"] <= 1
    assert metrics["forget_n"] == FORGET * QA_PER_AUTHOR == sum(r["set"] == "forget" for r in rows)
    # real-author probability is normalised over the alternatives: the three-way values sum to at most 1
    assert all(0 < r["prob"] < 1 for r in rows if r["set"] == "world_facts")
