"""Undefined metrics: an empty evaluation split (n = 0) and NaN become ``null`` plus a note in
metrics.json — never NaN, never invalid JSON."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from forgetlab.cli import app
from forgetlab.eval.undefined import NO_ITEMS, NOT_FINITE, undefined_notes, with_notes
from forgetlab.io import write_json


def strict_json(text: str):
    """Parse JSON, failing on the NaN / Infinity tokens Python's json would accept."""

    def refuse(token: str):
        raise AssertionError(f"{token} in metrics JSON")

    return json.loads(text, parse_constant=refuse)


def test_notes_name_each_undefined_value_and_its_reason(tmp_path) -> None:
    metrics = {
        "models": {"original": {"forget_qa_acc": None, "forget_qa_n": 0, "forget_vqa_acc": 0.5, "forget_vqa_n": 4,
                                "forget_qa_cloze": None, "forget_qa_cloze_n": 0, "lr": None}},
        "curve": [0.5, float("nan")], "loss": float("inf"),
    }  # fmt: skip
    assert undefined_notes(metrics) == {
        "models.original.forget_qa_acc": NO_ITEMS,
        "models.original.forget_qa_cloze": NO_ITEMS,
        "curve[1]": NOT_FINITE,
        "loss": NOT_FINITE,
    }  # "lr": None is not a metric over items: no note
    write_json(tmp_path / "m.json", with_notes(metrics))
    data = strict_json((tmp_path / "m.json").read_text())
    assert data["loss"] is None and data["curve"] == [0.5, None] and data["undefined"]["loss"] == NOT_FINITE
    assert with_notes({"acc": 0.5, "acc_n": 2}) == {"acc": 0.5, "acc_n": 2}  # nothing undefined: no entry


def test_eval_command_on_a_split_without_text_questions(tmp_path) -> None:
    """forget_10 with its Pure_Text questions removed: forget QA accuracy is undefined (n = 0)."""
    from forgetlab.data.synth import write_benchmark
    from forgetlab.models.tiny import build_tiny_model, save_model
    from forgetlab.train.finetune import benchmark_texts

    data = write_benchmark(tmp_path / "data", people=20, celebrities=4, train_views=1, test_views=1,
                           perception_train=2, perception_test=2)  # fmt: skip
    path = next((data / "forget_10").glob("*.parquet"))
    table = pq.read_table(path)
    rows = table.to_pylist()
    for r in rows:
        task = r["Classification_Task"]
        if isinstance(task, str):
            task = json.loads(task)
            task["Pure_Text_Questions"] = []
            r["Classification_Task"] = json.dumps(task)
        else:
            task["Pure_Text_Questions"] = []
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    model, processor = build_tiny_model("llava", benchmark_texts(data), image_size=16)
    save_model(model, processor, tmp_path / "model")
    result = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "model"), "--data", str(data),
                                      "--out", str(tmp_path / "eval"), "--no-generation"])  # fmt: skip
    assert result.exit_code == 0, result.output
    out = strict_json((tmp_path / "eval" / "metrics.json").read_text())
    m = out["metrics"]
    assert m["forget_qa_n"] == 0 and m["forget_qa_acc"] is None and math.isfinite(m["forget_vqa_acc"])
    assert m["forget_qa_acc_norm"] is None  # the length-normalised accuracy of the same (no) questions
    assert out["undefined"] == {"metrics.forget_qa_acc": NO_ITEMS, "metrics.forget_qa_acc_norm": NO_ITEMS}
