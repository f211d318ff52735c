"""``forgetlab unlearn`` / ``forgetlab mask`` end to end on a saved tiny model (typer CliRunner)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from forgetlab.cli import app
from forgetlab.masks import Mask

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_unlearn_ga_writes_a_model_folder(saved_model, tiny_bench, tmp_path) -> None:
    out = tmp_path / "ga"
    result = invoke("unlearn", "--method", "ga", "--model", saved_model, "--data", tiny_bench, "--forget-ratio", 10,
                    "--out", out, "--lr", 1e-3, "--epochs", 1, "--retain-weight", 0, "--seed", 3)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {"config.json", "model.safetensors", "train_log.jsonl", "unlearn.json"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "unlearn.json").read_text())
    config = summary["config"]
    assert (config["lr"], config["epochs"], config["seed"], config["retain_weight"]) == (1e-3, 1, 3, 0.0)
    assert config["span"] == "full" and summary["model"] == str(saved_model)
    assert len((out / "train_log.jsonl").read_text().splitlines()) == summary["steps"]["total"] == 2


def test_mmunlearner_computes_and_saves_its_mask(saved_model, tiny_bench, tmp_path) -> None:
    out = tmp_path / "mmu"
    result = invoke("unlearn", "--method", "mmunlearner", "--model", saved_model, "--data", tiny_bench,
                    "--out", out, "--max-steps", 2, "--set", "groups=language", "--set", "top_k=0.2")  # fmt: skip
    assert result.exit_code == 0, result.output
    mask = Mask.load(out / "mask.safetensors")
    assert mask.metadata["groups"] == "language" and mask.fraction == pytest.approx(0.2, abs=1e-3)
    assert json.loads((out / "unlearn.json").read_text())["config"]["method_config"]["top_k"] == 0.2


def test_mask_command_then_unlearn_with_the_mask_file(saved_model, tiny_bench, tmp_path) -> None:
    mask_file = tmp_path / "vision_mask.safetensors"
    result = invoke("mask", "--model", saved_model, "--data", tiny_bench, "--forget-ratio", 10,
                    "--groups", "vision", "--out", mask_file, "--gamma", 2, "--linear-only")  # fmt: skip
    assert result.exit_code == 0, result.output
    mask = Mask.load(mask_file)
    assert mask.metadata["groups"] == "vision" and mask.metadata["linear_only"] == "true"
    assert all("vision_tower" in n or "multi_modal_projector" in n for n in mask.tensors)
    out = tmp_path / "with_mask"
    result = invoke("unlearn", "--method", "mmunlearner", "--model", saved_model, "--data", tiny_bench,
                    "--out", out, "--mask", mask_file, "--max-steps", 1)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert Mask.load(out / "mask.safetensors").selected == mask.selected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "{tmp}/missing"], "does not exist"),
        (["--forget-ratio", "7"], "forget_ratio 7 is not one of [5, 10, 15]"),
        (["--method", "nope"], "unknown method 'nope'; valid names: ga, ga_diff, kl_min, mmunlearner"),
        (["--set", "betta=1", "--method", "npo"], "betta"),
        (["--lr", "inf"], "non-finite loss (nan) at step 1"),
        (["--method", "ga", "--mask", "{tmp}/m.safetensors"], "uses no parameter mask"),
        (["--method", "mmunlearner", "--mask", "{tmp}/m.safetensors"], "does not exist"),
        (["--data", "{tmp}/nodata"], "does not exist"),
    ],
)
def test_errors_print_one_line_and_exit_2(saved_model, tiny_bench, tmp_path, args, message) -> None:
    base = {"--method": "ga", "--model": str(saved_model), "--data": str(tiny_bench), "--out": str(tmp_path / "o"),
            "--max-steps": "3"}  # fmt: skip
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    result = invoke("unlearn", *[x for kv in base.items() for x in kv])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and message in errors[0], result.stderr  # one error line, last
    if "non-finite" not in message:  # set-up errors: nothing but that line (no progress bar yet)
        assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_mask_command_errors(saved_model, tiny_bench, tmp_path) -> None:
    result = invoke(
        "mask", "--model", saved_model, "--data", tiny_bench, "--groups", "audio", "--out", tmp_path / "m.safetensors"
    )
    assert result.exit_code == 2 and "groups" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = invoke("mask", "--model", tmp_path / "none", "--data", tiny_bench, "--out", tmp_path / "m.safetensors")
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_option_help_and_defaults_come_from_the_configs() -> None:
    from typer.main import get_command

    from forgetlab.methods import METHODS
    from forgetlab.methods.mmunlearner import MMUnlearnerConfig
    from forgetlab.train.unlearn_config import UnlearnConfig

    commands = get_command(app).commands
    fields = {"unlearn": {}, "mask": {"batch_size": "importance_batch_size"}}
    checked = 0
    for command, renamed in fields.items():
        for param in commands[command].params:
            field = renamed.get(param.name, param.name)
            mmu = command == "mask" and field in MMUnlearnerConfig.model_fields
            config = MMUnlearnerConfig if mmu else UnlearnConfig
            if field not in config.model_fields or field == "method":
                continue
            info = config.model_fields[field]
            assert param.help == info.description, (command, field)
            assert param.default == info.get_default(call_default_factory=True), (command, field)
            checked += 1
    assert checked == 19 + 8  # every option that sets a config field
    method = next(p for p in commands["unlearn"].params if p.name == "method")
    assert method.help.endswith(", ".join(METHODS.names()))
