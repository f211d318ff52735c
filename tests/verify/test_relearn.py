"""The relearning attack end to end on a tiny LLaVA (original = unlearned: the plumbing, not the science)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from forgetlab.cli import app
from forgetlab.data.collate import collate, encode
from forgetlab.methods._common import mean_nll
from forgetlab.models.load import load
from forgetlab.verify.relearn import FORGET_METRICS, HALVES, RETAIN_METRICS, relearn


def forget_nll(model_path, data, people: list[str]) -> float:
    """Token-mean NLL of the given people's forget VQA training pairs."""
    model, processor = load(model_path)
    samples = [s for s in data.forget if s.person_id in people and s.modality == "vqa"]
    pad = processor.tokenizer.pad_token_id
    batch = collate([encode(processor, s, span="full") for s in samples], pad)
    with torch.no_grad():
        return mean_nll(model.eval(), batch).item()


def test_relearn_end_to_end(tiny_model, bench_data, tmp_path) -> None:
    out = tmp_path / "relearn"
    summary = relearn(tiny_model, bench_data, out, original=tiny_model, lr=1e-3, epochs=2, batch_size=4,
                      save_model=True)  # fmt: skip
    assert json.loads((out / "relearn.json").read_text()) == summary
    assert summary["benchmark"] == "mllmu" and summary["data"] == str(bench_data.root)
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
    assert forget_nll(out / "model", bench_data, relearned) < forget_nll(tiny_model, bench_data, relearned) - 0.05


def test_precomputed_views_must_use_the_same_halves(tiny_model, bench_data, tmp_path) -> None:
    fake = {"people": {"relearned_people": ["x"], "held_out_people": ["y"]}, "retain": {}}
    fake |= {h: {} for h in HALVES}
    with pytest.raises(ValueError, match="other halves"):
        relearn(tiny_model, bench_data, tmp_path / "o", original_view=fake)
    with pytest.raises(ValueError, match="give the original model"):
        relearn(tiny_model, bench_data, tmp_path / "o")


def test_command_reports_bad_options_in_one_line(tiny_model, bench, tmp_path) -> None:
    args = ["relearn", "--model", str(tiny_model), "--original", str(tiny_model), "--data", str(bench)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o"), "--source", "nope"])
    assert result.exit_code == 2
    assert "error: unknown source 'nope'; choose one of ['forget', 'retain', 'unrelated']" in result.output


def test_halves_from_a_whole_evaluation_equal_evaluate_halves(tiny_model, bench, bench_data) -> None:
    """The study reads the unlearned model's halves from its sweep evaluation (every set of the benchmark as
    the study loads it, the answers kept as the sweep keeps them): the same numbers as evaluating the halves
    directly, with or without the generation items loaded."""
    from forgetlab.benchmarks import evaluate_benchmark, load_benchmark
    from forgetlab.data.mllmu import split_ids
    from forgetlab.study.sweep import ROW_KEYS
    from forgetlab.verify.relearn import evaluate_halves, forget_people, halves_from, split_people

    assert forget_people(bench_data) == split_ids(bench, "forget_10")  # the halves are drawn in the split's order
    model, processor = load(tiny_model)
    people = split_people(forget_people(bench_data), 0.5, 0)
    direct = evaluate_halves(model, processor, bench_data, people)
    study_data = load_benchmark("mllmu", bench, 10)  # as the study pipeline loads it: generation items too
    assert evaluate_halves(model, processor, study_data, people) == direct
    metrics, rows = evaluate_benchmark(study_data, model, processor, generation=False)
    assert {"realworld", "perception", "world"} <= {r["set"] for r in rows}  # more than the attack's sets
    saved = [{k: r[k] for k in ROW_KEYS if k in r} for r in rows if r["set"] in ("forget", "test")]
    assert halves_from("mllmu", saved, metrics, people) == direct
    assert direct["relearned_people"]["forget_vqa_n"] == 5 and direct["retain"]["retain_vqa_n"] > 0
