"""The relearning attack end to end on a tiny LLaVA (original = unlearned: the plumbing, not the science)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from forgetlab.cli import app
from forgetlab.data.collate import collate, encode
from forgetlab.data.mllmu import load_training
from forgetlab.methods._common import mean_nll
from forgetlab.models.load import load
from forgetlab.verify.relearn import FORGET_METRICS, HALVES, RETAIN_METRICS, relearn


def forget_nll(model_path, bench, people: list[str]) -> float:
    """Token-mean NLL of the given people's forget VQA training pairs."""
    model, processor = load(model_path)
    samples = [s for s in load_training(bench, "forget_10") if s.person_id in people and s.modality == "vqa"]
    pad = processor.tokenizer.pad_token_id
    batch = collate([encode(processor, s, span="full") for s in samples], pad)
    with torch.no_grad():
        return mean_nll(model.eval(), batch).item()


def test_relearn_end_to_end(tiny_model, bench, tmp_path) -> None:
    out = tmp_path / "relearn"
    summary = relearn(tiny_model, bench, 10, out, original=tiny_model, lr=1e-3, epochs=2, batch_size=4, save_model=True)
    assert json.loads((out / "relearn.json").read_text()) == summary
    relearned, held_out = summary["people"]["relearned_people"], summary["people"]["held_out_people"]
    assert len(relearned) == len(held_out) == 1 and set(relearned).isdisjoint(held_out)
    for model in ("original", "unlearned", "relearned"):
        for half in HALVES:
            assert set(FORGET_METRICS) <= summary["metrics"][model][half].keys()
            assert summary["metrics"][model][half]["forget_vqa_n"] == 5  # one person's 5 VQA MCQs
        assert set(RETAIN_METRICS) <= summary["metrics"][model]["retain"].keys()
    assert summary["metrics"]["original"] == summary["metrics"]["unlearned"]  # the same folder, evaluated once
    # original = unlearned: nothing was forgotten, so every recovery is undefined (None, not NaN)
    assert all(v is None for half in HALVES for v in summary["recovery"][half].values())
    assert summary["train"]["n_examples"] == 5 and summary["train"]["steps"] == 4  # 5 pairs, batch 4, 2 epochs
    # relearning lowers the NLL of the relearned person's answers
    assert forget_nll(out / "model", bench, relearned) < forget_nll(tiny_model, bench, relearned) - 0.05


def test_precomputed_metrics_must_use_the_same_halves(tiny_model, bench, tmp_path) -> None:
    fake = {"people": {"relearned_people": ["x"], "held_out_people": ["y"]}, "retain": {}}
    fake |= {h: {} for h in HALVES}
    with pytest.raises(ValueError, match="other halves"):
        relearn(tiny_model, bench, 10, tmp_path / "o", original_metrics=fake)
    with pytest.raises(ValueError, match="give the original model"):
        relearn(tiny_model, bench, 10, tmp_path / "o")


def test_command_reports_bad_options_in_one_line(tiny_model, bench, tmp_path) -> None:
    args = ["relearn", "--model", str(tiny_model), "--original", str(tiny_model), "--data", str(bench)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o"), "--source", "nope"])
    assert result.exit_code == 2
    assert "error: unknown source 'nope'; choose one of ['forget', 'retain', 'unrelated']" in result.output


def test_halves_from_a_whole_evaluation_equal_evaluate_halves(tiny_model, bench) -> None:
    """The demo reads the unlearned model's halves from its sweep evaluation (MCQ sets of every split):
    the same numbers as evaluating the halves directly."""
    from forgetlab.data.mllmu import split_ids
    from forgetlab.eval.runner import EvalConfig, evaluate, load_eval_sets
    from forgetlab.verify.relearn import evaluate_halves, halves_from, split_people

    model, processor = load(tiny_model)
    people = split_people(split_ids(bench, "forget_10"), 0.5, 0)
    direct = evaluate_halves(model, processor, bench, 10, people)
    sets = {k: [s for s in v if s.task == "classification"] for k, v in load_eval_sets(bench, 10).items()}
    result = evaluate(model, processor, bench, EvalConfig(forget_ratio=10, generation=False), eval_sets=sets)
    forget_and_test = [r for r in result.rows if r["set"] in ("forget", "test")]
    assert halves_from(forget_and_test, result.metrics, people) == direct
    assert direct["relearned_people"]["forget_vqa_n"] == 5 and direct["retain"]["retain_vqa_n"] > 0
