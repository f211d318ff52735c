"""The command-line contract of the foundation: synth, eval, clear errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from forgetlab.cli import app
from forgetlab.models.tiny import build_tiny_model, save_model

runner = CliRunner()


def test_synth_then_eval(tmp_path, bench_texts):
    data = tmp_path / "bench"
    r = runner.invoke(app, ["synth", "--out", str(data), "--people", "20", "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert (data / "forget_10" / "train-00000-of-00001.parquet").exists()
    from forgetlab.train.finetune import benchmark_texts

    model, processor = build_tiny_model("llava", benchmark_texts(data), image_size=32)
    save_model(model, processor, tmp_path / "model")
    out = tmp_path / "eval"
    r = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(tmp_path / "model"),
            "--data",
            str(data),
            "--forget-ratio",
            "10",
            "--out",
            str(out),
            "--no-generation",
        ],
    )
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    for key in (
        "forget_vqa_acc",
        "forget_qa_acc",
        "test_vqa_acc",
        "retain_vqa_acc",
        "retain_qa_acc",
        "realworld_vqa_acc",
        "realworld_qa_acc",
    ):
        assert 0.0 <= metrics[key] <= 1.0 and metrics[key.replace("_acc", "_n")] > 0
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == sum(metrics[k] for k in metrics if k.endswith("_n"))


def test_eval_missing_model_is_one_clear_line(tmp_path, small_bench):
    r = runner.invoke(
        app, ["eval", "--model", str(tmp_path / "nope"), "--data", str(small_bench), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 2
    assert "nope" in r.output and "Traceback" not in r.output


def test_eval_wrong_split_ratio_is_a_clear_error(tmp_path, small_bench, bench_texts):
    model, processor = build_tiny_model("llava", bench_texts, image_size=32)
    save_model(model, processor, tmp_path / "m")
    r = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(tmp_path / "m"),
            "--data",
            str(small_bench),
            "--forget-ratio",
            "7",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 2 and "forget ratio 7" in r.output
    assert not (tmp_path / "o").exists()  # nothing written on error
