"""The synthetic benchmark generator: determinism, exact MLLMU-Bench schema, split logic."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from forgetlab.data.portraits import (
    FEATURE_VALUES,
    FaceFeatures,
    RenderView,
    feature_distance,
    random_view,
    render_portrait,
)
from forgetlab.data.synth import ATTRIBUTES, MARKER, SPLITS, write_benchmark

SMALL = dict(people=20, celebrities=5, seed=3, train_views=3, test_views=2, perception_train=8, perception_test=8)

# The spec's types, written out independently of the generator's constants.
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
MCQ = pa.struct(
    [
        ("Question", pa.string()),
        (
            "Options",
            pa.struct([("A", pa.string()), ("B", pa.string()), ("C", pa.string()), ("D", pa.string())]),
        ),
        ("Correct_Answer", pa.string()),
    ]
)
CLASSIFICATION = pa.struct([("Image_Textual_Questions", pa.list_(MCQ)), ("Pure_Text_Questions", pa.list_(MCQ))])
OPEN = pa.list_(pa.struct([("Question", pa.string()), ("Ground_Truth", pa.string()), ("Type", pa.string())]))
PROFILE = pa.schema(
    [
        ("image", IMAGE),
        ("ID", pa.string()),
        ("biography", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("Classification_Task", CLASSIFICATION),
        ("Generation_Task", OPEN),
        ("Mask_Task", OPEN),
    ]
)
TEST = pa.schema(
    [
        ("ID", pa.string()),
        ("images", pa.list_(IMAGE)),
        ("Classification_Task", CLASSIFICATION),
        ("Generation_Task", OPEN),
        ("Mask_Task", OPEN),
    ]
)
FT = pa.schema([("image", IMAGE), ("ID", pa.string()), ("metadata", pa.string())])


def rows(root: Path, split: str) -> list[dict]:
    return pq.read_table(root / split / "train-00000-of-00001.parquet").to_pylist()


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.parquet"))
    }


def all_mcqs(row: dict) -> list[dict]:
    task = row["Classification_Task"]
    return task["Image_Textual_Questions"] + task["Pure_Text_Questions"]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_benchmark(tmp_path_factory.mktemp("small") / "bench", **SMALL)


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    start = time.perf_counter()
    root = write_benchmark(tmp_path_factory.mktemp("default") / "bench")
    return root, time.perf_counter() - start


def test_same_seed_gives_identical_bytes_and_other_seed_differs(small: Path, tmp_path: Path) -> None:
    again = write_benchmark(tmp_path / "again", **SMALL)
    assert file_hashes(again) == file_hashes(small)
    assert len(file_hashes(small)) == len(SPLITS)
    other = write_benchmark(tmp_path / "other", **{**SMALL, "seed": 4})
    a, b = file_hashes(small), file_hashes(other)
    assert all(a[k] != b[k] for k in a if not k.startswith("World_Set"))


def test_exact_schema_of_every_split(small: Path) -> None:
    expected = {split: PROFILE for split in SPLITS} | {"Test_Set": TEST, "ft_Data": FT, "Holdout_Set": FT}
    for split, schema in expected.items():
        actual = pq.read_schema(small / split / "train-00000-of-00001.parquet")
        assert actual.remove_metadata().equals(schema), f"{split}: {actual}"


def test_split_nesting_complement_and_ids(small: Path) -> None:
    ids = {split: [r["ID"] for r in rows(small, split)] for split in SPLITS}
    full = ids["Full_Set"]
    assert full == [f"P{i:03d}" for i in range(20)]
    assert ids["Test_Set"] == full
    assert ids["Retain_Set"] == [f"C{i:03d}" for i in range(5)]
    assert [len(ids[f"forget_{r}"]) for r in (5, 10, 15)] == [1, 2, 3]
    assert set(ids["forget_5"]) < set(ids["forget_10"]) < set(ids["forget_15"])
    for r in (5, 10, 15):
        assert sorted(ids[f"forget_{r}"] + ids[f"retain_{100 - r}"]) == full
        assert not set(ids[f"forget_{r}"]) & set(ids[f"retain_{100 - r}"])
    assert ids["Perception_Set"] == [f"perc_{i:04d}" for i in range(8)]
    assert ids["World_Set"] == [f"world_{i:03d}" for i in range(40)]
    # holdout people: their own IDs, in no other split, never in the fine-tuning data
    held = sorted(set(ids["Holdout_Set"]))
    assert held == [f"H{i:03d}" for i in range(10)]
    assert not set(held) & {i for split, v in ids.items() if split != "Holdout_Set" for i in v}
    # forget rows are the Full_Set rows themselves
    full_rows = {r["ID"]: r for r in rows(small, "Full_Set")}
    for r in rows(small, "forget_15"):
        assert r == full_rows[r["ID"]]
    marker = json.loads((small / MARKER).read_text())
    assert marker["seed"] == 3 and marker["people"] == 20 and marker["splits"] == list(SPLITS)
    assert marker["forget_ids"]["forget_10"] == ids["forget_10"]


def test_identities_unique_and_two_features_apart(small: Path) -> None:
    bios = [json.loads(r["biography"]) for r in rows(small, "Full_Set") + rows(small, "Retain_Set")]
    names = [b["Name"] for b in bios]
    assert len(set(names)) == len(names) == 25
    held = {json.loads(r["metadata"])[0]["Question"] for r in rows(small, "Holdout_Set") if r["image"] is None}
    assert not any(n.split()[0] in q for n in names for q in held), "holdout people reuse a benchmark name"
    assert all(len(n.split()) == 2 for n in names)
    faces = [FaceFeatures(**b["Appearance"]) for b in bios]
    assert min(feature_distance(a, b) for a, b in itertools.combinations(faces, 2)) >= 2
    for b in bios:
        for attr, pool in ATTRIBUTES.items():
            assert b[attr] in pool and " " not in b[attr]


def test_mcq_answers_match_profile_and_options_are_distinct(small: Path) -> None:
    for row in rows(small, "Full_Set") + rows(small, "Retain_Set"):
        bio = json.loads(row["biography"])
        truths = {bio["Name"], *(bio[a] for a in ATTRIBUTES)}
        for mcq in all_mcqs(row):
            options = mcq["Options"]
            assert sorted(options) == ["A", "B", "C", "D"]
            assert len(set(options.values())) == 4
            assert options[mcq["Correct_Answer"]] in truths
        for item in row["Generation_Task"] + row["Mask_Task"]:
            assert item["Type"] in ("Image_Textual", "Pure_Text")
            assert item["Ground_Truth"] in truths
        for item in row["Mask_Task"]:
            assert "___" in item["Question"] and " " not in item["Ground_Truth"]
    for row in rows(small, "Perception_Set"):
        assert row["Classification_Task"]["Pure_Text_Questions"] == []
        assert len(row["Classification_Task"]["Image_Textual_Questions"]) >= 3
    for row in rows(small, "World_Set"):
        assert row["image"] is None and row["Classification_Task"]["Image_Textual_Questions"] == []
        (mcq,) = row["Classification_Task"]["Pure_Text_Questions"]
        assert mcq["Options"][mcq["Correct_Answer"]] == row["answer"]


def test_ft_data_views_and_wording(small: Path) -> None:
    ft = rows(small, "ft_Data")
    full = {r["ID"]: r for r in rows(small, "Full_Set") + rows(small, "Retain_Set")}
    test_images = {im["bytes"] for r in rows(small, "Test_Set") for im in r["images"]}
    per_id = Counter(r["ID"] for r in ft)
    for pid, row in full.items():
        assert per_id[pid] == SMALL["train_views"] + 1
        mine = [r for r in ft if r["ID"] == pid]
        image_rows = [r for r in mine if r["image"] is not None]
        text_rows = [r for r in mine if r["image"] is None]
        assert len(image_rows) == SMALL["train_views"] and len(text_rows) == 1
        assert image_rows[0]["image"]["bytes"] == row["image"]["bytes"]  # view 0 = canonical
        views = [r["image"]["bytes"] for r in image_rows]
        assert len(set(views)) == len(views) and not set(views) & test_images
        vqa = json.loads(image_rows[0]["metadata"])
        qa = json.loads(text_rows[0]["metadata"])
        assert len(vqa) == 1 + len(ATTRIBUTES) and len(qa) == len(ATTRIBUTES)
        task = row["Classification_Task"]
        # same wording as the benchmark, same answers as the correct options
        for pairs, key in ((vqa, "Image_Textual_Questions"), (qa, "Pure_Text_Questions")):
            mcq = {m["Question"]: m["Options"][m["Correct_Answer"]] for m in task[key]}
            assert {p["Question"]: p["Answer"] for p in pairs} == mcq
    perc = [r for r in ft if r["ID"].startswith("perctrain_")]
    assert len(perc) == 8 and all(r["image"] is not None for r in perc)
    perc_test = {r["image"]["bytes"] for r in rows(small, "Perception_Set")}
    assert not {r["image"]["bytes"] for r in perc} & perc_test
    world = {r["ID"]: json.loads(r["metadata"]) for r in ft if r["ID"].startswith("world_")}
    for row in rows(small, "World_Set"):
        assert world[row["ID"]] == [{"Question": row["question"], "Answer": row["answer"]}]


def test_test_set_has_new_renderings(small: Path) -> None:
    full = {r["ID"]: r["image"]["bytes"] for r in rows(small, "Full_Set")}
    for row in rows(small, "Test_Set"):
        images = [im["bytes"] for im in row["images"]]
        assert len(images) == SMALL["test_views"] and len(set(images)) == len(images)
        assert full[row["ID"]] not in images
        assert all(Image.open(io.BytesIO(b)).size == (64, 64) for b in images)


def test_refuses_foreign_folder_and_replaces_previous_benchmark(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_benchmark(foreign, **SMALL)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    target = write_benchmark(tmp_path / "bench", **SMALL)
    (target / "stale.txt").write_text("x")
    write_benchmark(target, **{**SMALL, "seed": 9})
    assert not (target / "stale.txt").exists()
    assert json.loads((target / MARKER).read_text())["seed"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench", "foreign"]  # no temp leftovers


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="forget_5"):
        write_benchmark(tmp_path / "b", people=10)
    with pytest.raises(ValueError, match="celebrities"):
        write_benchmark(tmp_path / "b", people=20, celebrities=2)
    assert not (tmp_path / "b").exists()


def test_every_face_feature_is_visible_at_32px() -> None:
    base = FaceFeatures("peach", "black", "short", "blue", "none", "round")

    def small_pixels(face: FaceFeatures) -> np.ndarray:
        image = render_portrait(face).resize((32, 32), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.float32)

    reference = small_pixels(base)
    for feature, values in FEATURE_VALUES.items():
        for value in values:
            if value == getattr(base, feature):
                continue
            other = FaceFeatures(**{**base.as_dict(), feature: value})
            changed = np.abs(small_pixels(other) - reference).max(axis=2) > 40
            assert changed.sum() >= 6, f"{feature}={value} changes only {changed.sum()} pixels at 32x32"


def test_views_are_deterministic_and_canonical_is_neutral() -> None:
    face = FaceFeatures("tan", "red", "spiky", "green", "glasses", "oval")
    assert RenderView().is_canonical
    a = render_portrait(face, random_view(np.random.default_rng(1)))
    b = render_portrait(face, random_view(np.random.default_rng(1)))
    assert a.tobytes() == b.tobytes() and a.size == (64, 64) and a.mode == "RGB"
    assert render_portrait(face).tobytes() != a.tobytes()


def test_default_size_counts_and_vocabulary(default: tuple[Path, float]) -> None:
    root, _ = default  # its generation time is a bench figure (bench/), not a test: it depends on the load
    marker = json.loads((root / MARKER).read_text())
    assert marker["rows"] == {
        "Full_Set": 100,
        "Test_Set": 100,
        "Retain_Set": 20,
        "forget_5": 5,
        "forget_10": 10,
        "forget_15": 15,
        "retain_95": 95,
        "retain_90": 90,
        "retain_85": 85,
        "ft_Data": 120 * (8 + 1) + 200 + 40,  # 8 renderings + 1 text row per person
        "Perception_Set": 60,
        "World_Set": 40,
        "Holdout_Set": 10 * (8 + 1),
    }
    words: set[str] = set()
    letters: Counter[str] = Counter()
    for split in ("Full_Set", "Retain_Set", "Perception_Set", "World_Set"):
        for row in rows(root, split):
            for mcq in all_mcqs(row):
                letters[mcq["Correct_Answer"]] += 1
                words.update(re.findall(r"[a-z]+", " ".join([mcq["Question"], *mcq["Options"].values()]).lower()))
            for item in row["Generation_Task"] + row["Mask_Task"]:
                words.update(re.findall(r"[a-z]+", (item["Question"] + " " + item["Ground_Truth"]).lower()))
    for row in rows(root, "ft_Data"):
        for pair in json.loads(row["metadata"]):
            words.update(re.findall(r"[a-z]+", (pair["Question"] + " " + pair["Answer"]).lower()))
    assert 150 < len(words) < 400
    total = sum(letters.values())
    assert sorted(letters) == ["A", "B", "C", "D"]
    assert all(0.2 < n / total < 0.3 for n in letters.values()), letters
