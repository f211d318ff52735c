"""The CLEAR loader on fixture folders written in CLEAR's published schema: counts, IDs, the
name-recognition MCQ, caption items, the accepted file layouts and the error messages."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench_fixtures import AUTHORS, FORGET, IMAGES_PER_AUTHOR, QA_PER_AUTHOR, WRONG, write_clear
from forgetlab.data.clear import (
    CAPTION_QUESTIONS,
    NAME_QUESTION,
    caption_items,
    configs,
    eval_sets,
    forget_config,
    load_training,
    mcq_options,
    name_mcqs,
    real_mcqs,
    retain_config,
)
from forgetlab.data.mllmu import DataError

N_RETAIN = len(AUTHORS) - FORGET


@pytest.fixture(scope="module")
def clear(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clear(tmp_path_factory.mktemp("clear") / "CLEAR", percent=5)


def test_config_names(clear: Path) -> None:
    assert forget_config(1) == "forget01" and retain_config(10) == "retain90"
    with pytest.raises(ValueError, match=r"15 is not one of \[1, 5, 10\]"):
        forget_config(15)
    assert configs(clear) == sorted(
        ["forget05", "forget05+tofu", "forget05_perturbed", "real_faces", "real_world", "retain95",
         "retain95+tofu", "retain_perturbed"]
    )  # fmt: skip


def test_training_splits_counts_and_ids(clear: Path) -> None:
    forget = load_training(clear, "forget05")
    assert len(forget) == FORGET * IMAGES_PER_AUTHOR
    assert all(s.modality == "vqa" and s.task == "train" and s.image is not None for s in forget)
    assert [s.person_id for s in forget] == [a for a in AUTHORS[:FORGET] for _ in range(IMAGES_PER_AUTHOR)]
    assert all(s.question in CAPTION_QUESTIONS and s.answer.startswith(s.person_id) for s in forget)
    assert [s.question for s in forget] == [s.question for s in load_training(clear, "forget05")]  # seeded

    retain = load_training(clear, "retain95+tofu")
    kinds = Counter(s.modality for s in retain)
    assert kinds == {"vqa": N_RETAIN * IMAGES_PER_AUTHOR, "qa": N_RETAIN * QA_PER_AUTHOR}
    # +tofu has no name column: image rows get their name from retain95 (by caption), text rows by block
    assert Counter(s.person_id for s in retain if s.modality == "vqa") == dict.fromkeys(
        AUTHORS[FORGET:], IMAGES_PER_AUTHOR
    )
    assert Counter(s.person_id for s in retain if s.modality == "qa") == dict.fromkeys(AUTHORS[FORGET:], QA_PER_AUTHOR)
    assert all(s.image is None for s in retain if s.modality == "qa")


def test_name_recognition_mcq(clear: Path) -> None:
    mcqs = name_mcqs(clear, "forget05_perturbed")
    assert len(mcqs) == FORGET * IMAGES_PER_AUTHOR
    for s in mcqs:
        assert s.question == NAME_QUESTION and s.task == "classification" and s.modality == "vqa"
        assert s.image is not None and s.image.mode == "RGB"
        assert sorted(s.options) == ["A", "B", "C", "D"]
        assert s.options[s.correct] == s.answer == s.person_id
        assert sorted(v for k, v in s.options.items() if k != s.correct) == sorted(WRONG[:3])
    again = name_mcqs(clear, "forget05_perturbed")
    assert [s.correct for s in again] == [s.correct for s in mcqs]  # a function of (seed, row)
    letters = {s.correct for seed in range(8) for s in name_mcqs(clear, "retain_perturbed", seed=seed)}
    assert len(letters) > 1  # the answer's position varies


def test_mcq_options_inserts_answer_and_drops_duplicates() -> None:
    import numpy as np

    options, correct = mcq_options("Ann", ["Bob", "ann ", "Cid", "Bob"], np.random.default_rng(0))
    assert sorted(options.values()) == ["Ann", "Bob", "Cid"] and options[correct] == "Ann"
    with pytest.raises(ValueError, match="no wrong option"):
        mcq_options("Ann", ["Ann"], np.random.default_rng(0))


def test_caption_items_and_real_sets(clear: Path) -> None:
    caps = caption_items(clear, "retain_perturbed")
    assert len(caps) == N_RETAIN * IMAGES_PER_AUTHOR
    assert all(s.task == "generation" and s.meta["paraphrased"].startswith("A picture of") for s in caps)
    faces = real_mcqs(clear, "real_faces")
    assert [s.answer for s in faces] == [f"Celebrity {i}" for i in range(3)]
    assert all(s.question == NAME_QUESTION and s.options[s.correct] == s.answer for s in faces)
    world = real_mcqs(clear, "real_world")
    assert all(s.question == "What colour is the square?" and len(s.options) == 4 for s in world)
    assert [s.options[s.correct] for s in world] == ["red", "green", "blue"]


def test_eval_sets(clear: Path) -> None:
    sets = eval_sets(clear, 5)
    assert list(sets) == ["forget", "retain", "realfaces", "realworld"]
    count = Counter((s.task, s.modality) for s in sets["forget"])
    assert count == {
        ("classification", "vqa"): FORGET * IMAGES_PER_AUTHOR,
        ("generation", "vqa"): FORGET * IMAGES_PER_AUTHOR,
        ("generation", "qa"): FORGET * QA_PER_AUTHOR,
    }
    assert {s.person_id for s in sets["forget"]} == set(AUTHORS[:FORGET])
    assert len(eval_sets(clear, 5, generation=False)["retain"]) == N_RETAIN * IMAGES_PER_AUTHOR


def test_other_layouts(clear: Path, tmp_path: Path) -> None:
    """The refs/convert/parquet branch (<config>/train/0000.parquet) and several shards per config."""
    root = tmp_path / "converted"
    (root / "forget05" / "train").mkdir(parents=True)
    shutil.copy(clear / "forget05" / "train-00000-of-00001.parquet", root / "forget05" / "train" / "0000.parquet")
    assert len(load_training(root, "forget05")) == FORGET * IMAGES_PER_AUTHOR
    sharded = tmp_path / "sharded" / "forget05"
    sharded.mkdir(parents=True)
    table = pq.read_table(clear / "forget05" / "train-00000-of-00001.parquet")
    pq.write_table(table.slice(0, 1), sharded / "train-00000-of-00002.parquet")
    pq.write_table(table.slice(1), sharded / "train-00001-of-00002.parquet")
    assert [s.answer for s in load_training(sharded.parent, "forget05")] == [
        s.answer for s in load_training(clear, "forget05")
    ]


def test_missing_folder_config_and_column(clear: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere does not exist.*huggingface-cli download therem/CLEAR"):
        load_training(tmp_path / "nowhere", "forget05")
    with pytest.raises(DataError, match=r"'forget10' not found: looked for .*forget10.*available configs: forget05"):
        load_training(clear, "forget10")
    broken = tmp_path / "broken"
    shutil.copytree(clear / "forget05_perturbed", broken / "forget05_perturbed")
    path = broken / "forget05_perturbed" / "train-00000-of-00001.parquet"
    pq.write_table(pq.read_table(path).drop(["perturbed_names"]), path)
    with pytest.raises(DataError, match=r"column 'perturbed_names' missing in .*train-00000-of-00001\.parquet"):
        name_mcqs(broken, "forget05_perturbed")


def test_undecodable_image_names_config_row_and_person(tmp_path: Path) -> None:
    schema = pa.schema(
        [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("caption", pa.string()),
         ("name", pa.string())]
    )  # fmt: skip
    (tmp_path / "forget01").mkdir()
    rows = [{"image": {"bytes": b"\x89PNG broken", "path": "x.png"}, "caption": "c", "name": "Ann Lee"}]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "forget01" / "train-0.parquet")
    with pytest.raises(DataError, match=r"'forget01', column 'image', ID 'Ann Lee': cannot decode image"):
        load_training(tmp_path, "forget01")
    rows[0]["image"] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "forget01" / "train-0.parquet")
    with pytest.raises(DataError, match=r"config 'forget01', row 0 \(name 'Ann Lee'\): image is missing"):
        load_training(tmp_path, "forget01")
