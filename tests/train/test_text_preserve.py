"""The language group's text preserve set on the real MLLMU-Bench layout.

In the real download every training row (``train_split/forget_N``, ``train_split/retain_M``) has an
image, so there is no text-only QA among them; as the benchmark's reference code does, the text
preserve set is then ``Full_Set``'s ``Classification_Task.Pure_Text_Questions`` (question -> the correct
option's text). The fixture below is written in the real schema (parquet, image structs, JSON metadata).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from train_helpers import small_llava
from typer.testing import CliRunner

from forgetlab.cli import app
from forgetlab.data.mllmu import DataError, load_split, load_training
from forgetlab.masks import Mask, MaskError
from forgetlab.models.tiny import save_model
from forgetlab.train.masking import TEXT_PRESERVE_SOURCES, mask_from_samples, samples_digest, text_preserve_questions

PEOPLE = [f"{i}" for i in range(1, 11)]  # the real download's IDs are numbers
FORGET = PEOPLE[:1]  # forget_10 = 1 of 10 people
CITIES = ["rome", "paris", "oslo", "lima"]
JOBS = ["baker", "pilot", "judge", "nurse"]


def png(k: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), ((60 * k) % 256, (110 * k) % 256, (170 * k) % 256)).save(buf, format="PNG")
    return buf.getvalue()


def write(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000-of-00001.parquet")


def mcq(question: str, options: list[str], correct: int) -> dict:
    return {
        "Question": question,
        "Options": dict(zip("ABCD", options, strict=True)),
        "Correct_Answer": "ABCD"[correct],
    }


def profile(pid: str, k: int, *, text_questions: bool) -> dict:
    """A ``Full_Set``-schema row (also the schema of the forget_N / retain_M evaluation splits)."""
    name, city, job = f"person{pid}", CITIES[k % 4], JOBS[k % 4]
    pure = [
        mcq(f"where was {name} born ?", CITIES, k % 4),
        mcq(f"what is the job of {name} ?", JOBS, k % 4),
    ]
    return {
        "image": {"bytes": png(k), "path": f"{pid}.png"},
        "ID": pid,
        "biography": json.dumps({"Name": name, "Born": city, "Job": job}),
        "Classification_Task": {
            "Image_Textual_Questions": [mcq("where was the person in the image born ?", CITIES, k % 4)],
            "Pure_Text_Questions": pure if text_questions else [],
        },
        "Generation_Task": [{"Question": f"where was {name} born ?", "Ground_Truth": city, "Type": "Pure_Text"}],
        "Mask_Task": [
            {"Question": "the person in the image was born in ___ .", "Ground_Truth": city, "Type": "Image_Textual"}
        ],
    }


def train_row(pid: str, k: int) -> dict:
    """A ``train_split`` row of the real layout: an image and a JSON list of question/answer pairs."""
    pairs = [
        {"Question": "who is the person in the image ?", "Answer": f"person{pid}"},
        {"Question": "where was the person in the image born ?", "Answer": CITIES[k % 4]},
    ]
    return {"image": {"bytes": png(k), "path": f"{pid}.png"}, "ID": pid, "metadata": json.dumps(pairs)}


def write_real_layout(root: Path, *, text_questions: bool = True) -> Path:
    rows = {pid: profile(pid, k, text_questions=text_questions) for k, pid in enumerate(PEOPLE)}
    write(root / "Full_Set", list(rows.values()))
    write(root / "forget_10", [rows[p] for p in FORGET])
    write(root / "retain_90", [rows[p] for p in PEOPLE if p not in FORGET])
    train = {pid: train_row(pid, k) for k, pid in enumerate(PEOPLE)}
    write(root / "train_split" / "forget_10", [train[p] for p in FORGET])
    write(root / "train_split" / "retain_90", [train[p] for p in PEOPLE if p not in FORGET])
    return root


@pytest.fixture(scope="module")
def real_root(tmp_path_factory) -> Path:
    return write_real_layout(tmp_path_factory.mktemp("real") / "MLLMU-Bench")


@pytest.fixture(scope="module")
def real_model(tmp_path_factory, real_root) -> Path:
    train = [s for split in ("forget_10", "retain_90") for s in load_training(real_root, split)]
    mcqs = load_split(real_root, "Full_Set", tasks=("classification",))
    texts = [t for s in train for t in (s.question, s.answer)]
    texts += [t for s in mcqs for t in (s.question, *s.options.values())]
    model, processor = small_llava(texts)
    path = tmp_path_factory.mktemp("real-model") / "model"
    save_model(model, processor, path)
    return path


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_the_fixture_has_the_real_layouts_problem(real_root) -> None:
    rows = load_training(real_root, "forget_10") + load_training(real_root, "retain_90")
    assert rows and all(s.modality == "vqa" and s.image is not None for s in rows)  # no text-only QA


def test_text_preserve_set_is_full_sets_pure_text_questions(real_root) -> None:
    got = text_preserve_questions(real_root)
    expected = [s for s in load_split(real_root, "Full_Set", tasks=("classification",)) if s.modality == "qa"]
    assert len(got) == 2 * len(PEOPLE) == len(expected)
    assert [(s.question, s.answer, s.person_id) for s in got] == [(s.question, s.answer, s.person_id) for s in expected]
    assert all(s.answer == s_.options[s_.correct] for s, s_ in zip(got, expected, strict=True))  # the correct text
    assert all(s.modality == "qa" and s.image is None and s.task == "train" and not s.is_mcq for s in got)
    assert set(FORGET) < {s.person_id for s in got}  # text knowledge about the forget people is preserved


def test_language_mask_records_a_non_empty_text_preserve_set(real_root, real_model, tmp_path) -> None:
    out = tmp_path / "mask.safetensors"
    result = invoke("mask", "--model", real_model, "--data", real_root, "--forget-ratio", 10,
                    "--groups", "language", "--out", out, "--batch-size", 4)  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = Mask.load(out).describe()["metadata"]
    assert meta["sizes"] == {"forget_vqa": 2, "retain_vqa": 18, "qa_all": 2 * len(PEOPLE)}
    assert meta["text_preserve"] == TEXT_PRESERVE_SOURCES[1]
    assert meta["hashes"]["qa_all"] == samples_digest(text_preserve_questions(real_root))
    assert meta["preserve"] == {"language": ["retain_vqa", "qa_all"]}
    # the trainer builds the same preserve set when MMUnlearner computes its own mask
    unlearned = tmp_path / "unlearned"
    result = invoke("unlearn", "--method", "mmunlearner", "--model", real_model, "--data", real_root,
                    "--out", unlearned, "--max-steps", 1, "--set", "groups=language",
                    "--set", "importance_batch_size=4")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert Mask.load(unlearned / "mask.safetensors").describe()["metadata"]["sizes"]["qa_all"] == 2 * len(PEOPLE)


def test_without_any_text_question_the_language_mask_names_the_missing_set(real_model, tmp_path) -> None:
    root = write_real_layout(tmp_path / "no-text", text_questions=False)
    out = tmp_path / "mask.safetensors"
    result = invoke("mask", "--model", real_model, "--data", root, "--groups", "language", "--out", out)
    assert result.exit_code == 2, result.output
    assert "text preserve set (qa_all" in result.stderr and "is empty" in result.stderr
    assert "Pure_Text_Questions" in result.stderr and not out.exists()
    # the vision group's preserve set is retain VQA alone: it needs no text question
    result = invoke("mask", "--model", real_model, "--data", root, "--groups", "vision", "--out", out)
    assert result.exit_code == 0, result.output
    assert "text_preserve" not in Mask.load(out).metadata


def test_a_missing_full_set_is_named_too(real_root, tmp_path) -> None:
    train = load_training(real_root, "forget_10"), load_training(real_root, "retain_90")
    with pytest.raises(DataError, match=r"text preserve set \(qa_all.*forget_10 and retain_90.*Full_Set.*not found"):
        text_preserve_questions(tmp_path, *train)
    with pytest.raises(DataError, match=r"text preserve set \(qa_all.*pass the benchmark folder"):
        text_preserve_questions(None, *train)


def test_a_mask_that_selects_nothing_is_an_error(real_root) -> None:
    texts = [t for s in load_training(real_root, "forget_10") for t in (s.question, s.answer)]
    model, processor = small_llava(texts)
    forget = load_training(real_root, "forget_10")
    # preserve = forget: I_p == I_f exactly, so I_f >= 2 * I_p holds nowhere with I_f > 0
    with pytest.raises(MaskError, match=r"the vision mask selects no element: none of the \d+ elements with I_f > 0"):
        mask_from_samples(model, processor, forget, forget, groups="vision", gamma=2.0, batch_size=2)
    assert mask_from_samples(model, processor, forget, forget, groups="vision", gamma=1.0, batch_size=2).selected > 0
