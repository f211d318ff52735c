"""The TOFU loader on fixture folders in TOFU's published layout (``<config>.json`` JSON lines)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench_fixtures import AUTHORS, FORGET, QA_PER_AUTHOR, write_tofu
from forgetlab.data.mllmu import DataError
from forgetlab.data.tofu import (
    configs,
    eval_sets,
    forget_config,
    holdout_config,
    load_perturbed,
    load_qa,
    retain_config,
)


@pytest.fixture(scope="module")
def tofu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tofu(tmp_path_factory.mktemp("tofu") / "TOFU", percent=5)


def test_configs_and_counts(tofu: Path) -> None:
    assert (forget_config(10), retain_config(1), holdout_config(5)) == ("forget10", "retain99", "holdout05")
    assert set(configs(tofu)) == {
        "full", "forget05", "retain95", "holdout05", "forget05_perturbed", "retain_perturbed",
        "world_facts_perturbed", "real_authors_perturbed",
    }  # fmt: skip
    forget = load_qa(tofu, "forget05")
    assert len(forget) == FORGET * QA_PER_AUTHOR
    assert all(s.modality == "qa" and s.task == "train" and s.image is None for s in forget)
    assert [s.person_id for s in forget[::QA_PER_AUTHOR]] == ["author000", "author001"]
    assert len(load_qa(tofu, "full")) == len(AUTHORS) * QA_PER_AUTHOR
    assert len(load_qa(tofu, "holdout05")) == 2 * QA_PER_AUTHOR


def test_perturbed_items_are_truth_ratio_inputs(tofu: Path) -> None:
    items = load_perturbed(tofu, "forget05_perturbed")
    assert len(items) == FORGET * QA_PER_AUTHOR
    first = items[0]
    assert first.answer == "Fact 0 is x0." and first.paraphrased_answer == "Fact 0 equals x0."
    assert first.perturbed_answers == ("Fact 0 is y.", "Fact 0 is z.", "Fact 0 is w.")
    assert first.as_sample().task == "generation" and first.as_sample().answer == first.answer


def test_eval_sets(tofu: Path, tmp_path: Path) -> None:
    sets = eval_sets(tofu, 5)
    assert {k: len(v) for k, v in sets.items()} == {
        "forget": FORGET * QA_PER_AUTHOR, "retain": QA_PER_AUTHOR, "real_authors": 4, "world_facts": 4,
    }  # fmt: skip
    assert sets["world_facts"][1].person_id == "world_facts_perturbed#1"
    bare = write_tofu(tmp_path / "bare", percent=5, real=False)
    assert list(eval_sets(bare, 5)) == ["forget", "retain"]


def test_json_array_and_parquet_layouts(tofu: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (tofu / "forget05.json").read_text().splitlines()]
    (tmp_path / "array").mkdir()
    (tmp_path / "array" / "forget05.json").write_text(json.dumps(rows))
    (tmp_path / "parquet" / "forget05").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "parquet" / "forget05" / "train-00000-of-00001.parquet")
    (tmp_path / "lines").mkdir()
    (tmp_path / "lines" / "forget05.jsonl").write_text((tofu / "forget05.json").read_text())
    expected = [(s.question, s.answer) for s in load_qa(tofu, "forget05")]
    for layout in ("array", "parquet", "lines"):
        assert [(s.question, s.answer) for s in load_qa(tmp_path / layout, "forget05")] == expected


def test_errors_name_the_path_column_and_row(tofu: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist.*huggingface-cli download locuslab/TOFU"):
        load_qa(tmp_path / "missing", "forget05")
    with pytest.raises(DataError, match=r"config 'forget10' not found: looked for .*forget10\.json"):
        load_qa(tofu, "forget10")
    (tmp_path / "forget05_perturbed.json").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(DataError, match=r"column 'paraphrased_answer' missing in row 0 of .*forget05_perturbed\.json"):
        load_perturbed(tmp_path, "forget05_perturbed")
    (tmp_path / "forget01.json").write_text('{"question": "q", "answer": "a"}\n{"question": \n')
    with pytest.raises(DataError, match=r"forget01\.json, line 2: malformed JSON line"):
        load_qa(tmp_path, "forget01")
    (tmp_path / "retain99.json").write_text('{"question": "q", "answer": ""}\n')
    with pytest.raises(DataError, match=r"config 'retain99', row 0: column 'answer' must be non-empty text"):
        load_qa(tmp_path, "retain99")
