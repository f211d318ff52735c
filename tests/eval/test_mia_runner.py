"""Membership inference end to end: an overfit model exposes its members, an untrained one does not."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from forgetlab.data.collate import collate
from forgetlab.data.mllmu import load_training
from forgetlab.data.schema import Sample
from forgetlab.eval.mia_runner import (
    answer_token_stats,
    benchmark_mia_sets,
    holdout_people,
    mia_report,
)
from forgetlab.models.tiny_lm import build_tiny_causal_lm
from forgetlab.probe.capture import encode_probe

WORDS = (
    "red blue green amber violet river stone cloud apple tiger piano candle harbor meadow falcon "
    "silver winter lantern orbit maple copper ember willow saffron quartz thunder velvet cedar "
    "coral ivory jade lotus marble nectar opal pepper quill raven sable topaz"
).split()


def _samples(n: int, seed: int, tag: str) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [
        Sample(
            question=f"what does record {WORDS[i % len(WORDS)]} say",
            answer=" ".join(rng.choice(WORDS, size=6)),
            modality="qa",
            task="train",
            person_id=f"{tag}{i}",
            split=tag,
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def lm():
    texts = [*WORDS, "what does record say"]
    model, tok = build_tiny_causal_lm(texts, hidden=32, layers=2, heads=2, seed=0)
    return model.eval(), tok


def _overfit(model, tok, members: list[Sample], steps: int = 200) -> torch.nn.Module:
    model = copy.deepcopy(model).train()
    batch = collate(encode_probe(tok, members), tok.pad_token_id)
    labels = batch.pop("labels")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        logits = model(**batch).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_overfit_members_are_detected(lm):
    model, tok = lm
    members, nonmembers = _samples(8, 1, "m"), _samples(8, 2, "n")
    trained = _overfit(model, tok, members)
    report = mia_report(trained, tok, members, nonmembers, ref_model=model)
    auc = report["by_modality"]["qa"]["auc"]
    assert set(auc) == {"loss", "zlib", "mink", "minkpp", "reference"}
    assert all(v >= 0.95 for v in auc.values()), auc
    assert report["skipped"] == {} and "vqa" not in report["by_modality"]
    scores = report["by_modality"]["qa"]["scores"]
    assert len(scores["members"]["loss"]) == 8 and len(scores["nonmembers"]["minkpp"]) == 8
    # PrivLeak against a retain model at chance: strongly negative (still recognisable)
    leak = mia_report(trained, tok, members, nonmembers, retain_auc={"qa": {"loss": 0.5}}, keep_scores=False)
    assert leak["by_modality"]["qa"]["privleak"]["loss"] == pytest.approx((1 - auc["loss"] - 0.5) / 0.5 * 100)
    assert leak["by_modality"]["qa"]["privleak"]["zlib"] is None  # no retain AUC given for it


def test_untrained_model_is_at_chance(lm):
    model, tok = lm
    report = mia_report(model, tok, _samples(40, 3, "m"), _samples(40, 4, "n"), keep_scores=False)
    auc = report["by_modality"]["qa"]["auc"]
    assert all(abs(v - 0.5) < 0.2 for v in auc.values()), auc


def test_token_stats_do_not_depend_on_batching(lm):
    model, tok = lm
    samples = _samples(5, 5, "x")
    samples[0] = Sample("what does record say", " ".join(WORDS[:20]), "qa", "train", "long", "x")
    one = answer_token_stats(model, tok, samples, batch_size=1)
    many = answer_token_stats(model, tok, samples, batch_size=5)
    for a, b in zip(one, many, strict=True):
        assert len(a.logprobs) == len(b.logprobs) > 0
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
        np.testing.assert_allclose(a.sigma, b.sigma, atol=1e-5)
    assert len(one[0].logprobs) == 21  # 20 answer words + the end-of-turn token
    assert all((s.logprobs <= 0).all() for s in one)


def test_vqa_and_qa_are_reported_separately(bench_texts, small_bench):
    from forgetlab.data.mllmu import load_training
    from forgetlab.models.tiny import build_tiny_model

    model, processor = build_tiny_model("llava", bench_texts, image_size=32, seed=0)
    forget = load_training(small_bench, "forget_10")
    other = [s for s in load_training(small_bench, "retain_90") if s.person_id == "P000"]
    members = [s for s in forget if s.modality == "vqa"][:3] + [s for s in forget if s.modality == "qa"][:3]
    nonmembers = [s for s in other if s.modality == "vqa"][:3] + [s for s in other if s.modality == "qa"][:2]
    report = mia_report(model.eval(), processor, members, nonmembers, keep_scores=False)
    assert set(report["by_modality"]) == {"vqa", "qa"}
    assert report["by_modality"]["qa"]["n_nonmembers"] == 2
    assert all(0.0 <= v <= 1.0 for v in report["by_modality"]["vqa"]["auc"].values())
    only_qa = mia_report(model, processor, members, nonmembers[3:], keep_scores=False)
    assert only_qa["skipped"] == {"vqa": "3 members, 0 non-members"}
    with pytest.raises(ValueError, match="members and non-members"):
        mia_report(model, processor, members, [])


def test_benchmark_holdout(small_bench):
    held = holdout_people(small_bench, n=2, seed=0)
    assert held == holdout_people(small_bench, n=2, seed=0) and len(held) == 2
    assert not set(held) & {"P006", "P008", "P010"}  # forget_15 people stay forgettable
    members, nonmembers = benchmark_mia_sets(small_bench, 10, held)
    assert {s.person_id for s in nonmembers} == set(held)
    assert {s.person_id for s in members} == {"P006", "P008"}
    assert {s.question for s in members} & {s.question for s in nonmembers}  # same templates
    with pytest.raises(ValueError, match="forget_10"):
        benchmark_mia_sets(small_bench, 10, ["P006"])


def test_embedded_holdout_set_is_the_default_nonmember_set(small_bench):
    members, nonmembers = benchmark_mia_sets(small_bench, 10)
    held = {s.person_id for s in nonmembers}
    assert held and all(p.startswith("H") for p in held)
    ft_people = {s.person_id for s in load_training(small_bench, "ft_Data")}
    assert not held & ft_people  # never fine-tuned on: true non-members
    assert {s.modality for s in nonmembers} == {"vqa", "qa"}
    assert {s.question for s in members if s.modality == "vqa"} == {
        s.question for s in nonmembers if s.modality == "vqa"
    }  # same question templates as the members
