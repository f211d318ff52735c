"""Training curves: accelerate's TensorBoard tracker (``log_with``) and evaluation during training (``eval_every``).

The event files are read back with TensorBoard's ``EventAccumulator`` and compared number by number
with ``train_log.jsonl``; evaluation during training must leave the trained weights bit-identical.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import small_llava, snapshot, splits
from typer.testing import CliRunner

from forgetlab.cli import app
from forgetlab.train.tracking import TrackerUnavailable, step_scalars, training_eval_sets
from forgetlab.train.unlearn import UnlearnConfig, UnlearnDiverged, UnlearnRecipe, unlearn

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

EVAL_KEYS = ("forget_vqa", "forget_qa", "retain_vqa", "retain_qa")


def read_rows(out: Path) -> tuple[list[dict], list[dict]]:
    """(step rows, eval rows) of ``out/train_log.jsonl``."""
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval" not in r], [r for r in rows if "eval" in r]


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the event files directly in ``run_dir``."""
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_equal_the_jsonl_log(saved_model, tiny_bench, tmp_path) -> None:
    out = tmp_path / "out"
    config = UnlearnConfig(method="ga_diff", lr=1e-3, max_steps=3, batch_size=4, log_with="tensorboard")
    summary = unlearn(saved_model, tiny_bench, out, config)
    steps, evals = read_rows(out)
    assert [r["step"] for r in steps] == [0, 1, 2] == list(range(summary["steps"]["total"])) and evals == []
    run_dir = out / "tensorboard" / "ga_diff"
    scalars = read_scalars(run_dir)
    keys = ("loss", "forget_nll", "forget_loss", "retain_loss", "grad_norm", "lr")
    assert {f"train/{k}" for k in keys} <= scalars.keys()
    for key in keys:
        logged = scalars[f"train/{key}"]
        assert [s for s, _ in logged] == [0, 1, 2]
        # event files hold float32
        assert [v for _, v in logged] == pytest.approx([r[key] for r in steps], rel=1e-6, abs=1e-7)
    hparams = [yaml.safe_load(p.read_text()) for p in run_dir.rglob("hparams.yml")]
    assert len(hparams) == 1 and hparams[0]["method"] == "ga_diff" and hparams[0]["lr"] == 1e-3
    assert hparams[0]["method_config.retain_weight"] == summary["config"]["method_config"]["retain_weight"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the staging folder was moved, not copied


def test_eval_every_logs_accuracies_and_leaves_training_unchanged(words, tiny_bench, tmp_path) -> None:
    # LoRA dropout draws from torch's global RNG on every training forward: an evaluation that drew
    # random numbers, or left the model in eval mode, would change the trained weights
    fields = {"method": "ga_diff", "lr": 1e-3, "max_steps": 3, "batch_size": 4, "lora": {"r": 4, "dropout": 0.2}}
    forget, retain = splits(tiny_bench)
    trained = {}
    for name, extra in {"plain": {}, "eval": {"eval_every": 2, "log_with": "tensorboard"}}.items():
        model, processor = small_llava(words)
        recipe = UnlearnRecipe(UnlearnConfig(**fields, **extra), log_dir=tmp_path / f".{name}-tb")
        sets = training_eval_sets(tiny_bench, 10) if extra else None
        recipe.setup(model, processor, forget, retain, eval_sets=sets)
        recipe.train()
        assert all(m.training for m in recipe.model.modules())
        trained[name] = snapshot(recipe.model)
        recipe.save(tmp_path / name)
    assert trained["plain"].keys() == trained["eval"].keys()
    assert all(torch.equal(trained["plain"][n], trained["eval"][n]) for n in trained["plain"])
    steps, evals = read_rows(tmp_path / "eval")
    assert steps == read_rows(tmp_path / "plain")[0]
    assert [r["step"] for r in evals] == [0, 2, 3]  # before training, every 2 steps, after the last
    ns = {k: evals[0]["eval"][f"{k}_n"] for k in EVAL_KEYS}
    assert ns == {"forget_vqa": 10, "forget_qa": 8, "retain_vqa": 64, "retain_qa": 64}  # retain: a 64-sample
    scalars = read_scalars(tmp_path / "eval" / "tensorboard" / "ga_diff")
    for key in EVAL_KEYS:
        accs = [r["eval"][f"{key}_acc"] for r in evals]
        assert all(0.0 <= a <= 1.0 for a in accs)
        assert all((a * ns[key]).is_integer() for a in accs)  # a fraction of the questions
        assert [s for s, _ in scalars[f"eval/{key}_acc"]] == [0, 2, 3]
        assert [v for _, v in scalars[f"eval/{key}_acc"]] == pytest.approx(accs, rel=1e-6)
    assert not (tmp_path / "plain" / "tensorboard").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "plain"]


def test_without_log_with_there_is_no_tensorboard_folder(saved_model, tiny_bench, tmp_path) -> None:
    out = tmp_path / "out"
    summary = unlearn(saved_model, tiny_bench, out, UnlearnConfig(method="ga", max_steps=2, batch_size=4))
    assert not (out / "tensorboard").exists() and not list(out.rglob("events.out.tfevents*"))
    steps, evals = read_rows(out)
    assert [r["step"] for r in steps] == [0, 1] and evals == []
    assert steps[-1] == summary["final"] and {"loss", "grad_norm", "lr"} <= steps[0].keys()
    assert summary["config"]["log_with"] == "none" and summary["config"]["eval_every"] is None
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_divergence_closes_the_tracker_and_leaves_the_previous_output(saved_model, tiny_bench, tmp_path) -> None:
    out = tmp_path / "run"
    unlearn(saved_model, tiny_bench, out, UnlearnConfig(method="ga", max_steps=1, log_with="tensorboard"))
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    config = UnlearnConfig(method="ga", lr=float("inf"), max_steps=3, log_with="tensorboard", eval_every=1)
    with pytest.raises(UnlearnDiverged, match=r"non-finite .* at step 1"):
        unlearn(saved_model, tiny_bench, out, config)
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left behind


def test_recipe_closes_trackers_on_error(words, tiny_bench, tmp_path) -> None:
    model, processor = small_llava(words)
    forget, retain = splits(tiny_bench)
    recipe = UnlearnRecipe(UnlearnConfig(method="ga", lr=float("inf"), max_steps=3, log_with="tensorboard"),
                           log_dir=tmp_path / "tb")  # fmt: skip
    recipe.setup(model, processor, forget, retain)
    with pytest.raises(UnlearnDiverged):
        recipe.train()
    assert recipe.accelerator.trackers == [] and not (tmp_path / "tb").exists()


def test_eval_every_needs_questions(words, tiny_bench) -> None:
    model, processor = small_llava(words)
    forget, retain = splits(tiny_bench)
    with pytest.raises(ValueError, match="eval_every needs multiple-choice questions"):
        UnlearnRecipe(UnlearnConfig(method="ga", eval_every=2)).setup(model, processor, forget, retain)
    with pytest.raises(ValueError, match="without options"):
        UnlearnRecipe(UnlearnConfig(method="ga", eval_every=2)).setup(
            model, processor, forget, retain, eval_sets={"forget_train": forget}
        )
    with pytest.raises(ValueError, match="eval_every"):
        UnlearnConfig(method="ga", eval_every=0)


def test_eval_sets_are_fixed_and_capped(tiny_bench) -> None:
    a, b = training_eval_sets(tiny_bench, 10), training_eval_sets(tiny_bench, 10)
    assert {k: len(v) for k, v in a.items()} == {"forget_vqa": 10, "forget_qa": 8, "retain_vqa": 64, "retain_qa": 64}
    assert a == b and all(s.is_mcq for v in a.values() for s in v)
    assert len(training_eval_sets(tiny_bench, 10, retain_max=5)["retain_vqa"]) == 5


def test_retain_steps_get_their_own_curves() -> None:
    row = {"step": 4, "epoch": 0, "kind": "retain", "lr": 1e-3, "grad_norm": float("nan"), "retain_nll": 2.5}
    assert step_scalars(row) == {"train/retain_step/lr": 1e-3, "train/retain_step/retain_nll": 2.5}
    assert step_scalars(row | {"kind": "forget"}) == {"train/lr": 1e-3, "train/retain_nll": 2.5}


def test_missing_tensorboard_gives_the_install_command(saved_model, tiny_bench, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # find_spec -> None: "not installed"
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(TrackerUnavailable, match=r"pip install 'forgetlab\[tensorboard\]'"):
        UnlearnRecipe(UnlearnConfig(method="ga", log_with="tensorboard"))
    args = ["--model", saved_model, "--data", tiny_bench, "--out", tmp_path / "o", "--log-with", "tensorboard"]
    result = CliRunner().invoke(app, ["unlearn", "--method", "ga", *map(str, args)])
    assert result.exit_code == 2 and "forgetlab[tensorboard]" in result.output
    assert not (tmp_path / "o").exists()
