"""The MLLMU-Bench-format loader: reads what the generator writes, both encodings of the real
download, and rejects malformed input with a DataError that says where the problem is."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from forgetlab.data.mllmu import (
    DataError,
    available_splits,
    load_biographies,
    load_split,
    load_training,
    split_ids,
)
from forgetlab.data.synth import ATTRIBUTES, SPLITS, write_benchmark

PEOPLE, CELEBS, TRAIN_VIEWS, TEST_VIEWS = 20, 5, 3, 2
N_ATTR = len(ATTRIBUTES)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_benchmark(
        tmp_path_factory.mktemp("mllmu") / "bench",
        people=PEOPLE,
        celebrities=CELEBS,
        seed=1,
        train_views=TRAIN_VIEWS,
        test_views=TEST_VIEWS,
        perception_train=6,
        perception_test=6,
    )


def png(color: tuple[int, int, int] = (10, 200, 30), size: tuple[int, int] = (8, 8), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 0).save(buf, format="PNG")
    return buf.getvalue()


def write(folder: Path, rows: list[dict], name: str = "train-00000-of-00001.parquet") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / name)


def mcq(question: str, correct: str = "B") -> dict:
    return {
        "Question": question,
        "Options": {"A": "paris", "B": "rome", "C": "oslo", "D": "lima"},
        "Correct_Answer": correct,
    }


def profile_row(pid: str = "7", *, image: bytes | None = None, correct: str = "B") -> dict:
    return {
        "image": {"bytes": image if image is not None else png(), "path": f"{pid}.png"},
        "ID": pid,
        "biography": json.dumps({"Name": "Ann Lee"}),
        "question": "q",
        "answer": "a",
        "Classification_Task": {
            "Image_Textual_Questions": [mcq("Where was the person in the image born?", correct)],
            "Pure_Text_Questions": [mcq("Where was Ann Lee born?")],
        },
        "Generation_Task": [{"Question": "Where was Ann Lee born?", "Ground_Truth": "rome", "Type": "Pure_Text"}],
        "Mask_Task": [
            {
                "Question": "The person in the image was born in ___.",
                "Ground_Truth": "rome",
                "Type": "Image_Textual",
            }
        ],
    }


# --------------------------------------------------------------------------- reading the generator's output


def test_available_splits_and_ids(bench: Path) -> None:
    assert available_splits(bench) == sorted(SPLITS)
    assert split_ids(bench, "Full_Set") == [f"P{i:03d}" for i in range(PEOPLE)]
    assert set(split_ids(bench, "forget_10")) < set(split_ids(bench, "Full_Set"))
    assert len(split_ids(bench, "ft_Data")) == PEOPLE + CELEBS + 6 + 40
    bios = load_biographies(bench, "Retain_Set")
    assert list(bios) == [f"C{i:03d}" for i in range(CELEBS)]
    assert set(bios["C000"]) == {"Name", *ATTRIBUTES, "Appearance"}


def test_full_set_counts_modalities_and_options(bench: Path) -> None:
    samples = load_split(bench, "Full_Set")
    kinds = Counter((s.task, s.modality) for s in samples)
    assert kinds == {
        ("classification", "vqa"): PEOPLE * (1 + N_ATTR),
        ("classification", "qa"): PEOPLE * N_ATTR,
        ("generation", "vqa"): PEOPLE * (1 + N_ATTR),
        ("generation", "qa"): PEOPLE * N_ATTR,
        ("mask", "vqa"): PEOPLE * N_ATTR,
        ("mask", "qa"): PEOPLE * N_ATTR,
    }
    for s in samples:
        assert s.split == "Full_Set" and s.person_id.startswith("P")
        assert (s.image is not None) == (s.modality == "vqa")
        if s.image is not None:
            assert s.image.mode == "RGB" and s.image.size == (64, 64)
        if s.task == "classification":
            assert s.is_mcq and sorted(s.options) == ["A", "B", "C", "D"] and s.answer == s.options[s.correct]
        else:
            assert not s.is_mcq
    only_mcq = load_split(bench, "Retain_Set", tasks=("classification",))
    assert len(only_mcq) == CELEBS * (1 + 2 * N_ATTR) and {s.task for s in only_mcq} == {"classification"}


def test_test_set_one_sample_per_image_and_id_restriction(bench: Path) -> None:
    forget = split_ids(bench, "forget_15")
    samples = load_split(bench, "Test_Set", ids=forget, tasks=("classification",))
    assert {s.person_id for s in samples} == set(forget)
    vqa = [s for s in samples if s.modality == "vqa"]
    qa = [s for s in samples if s.modality == "qa"]
    assert len(vqa) == len(forget) * (1 + N_ATTR) * TEST_VIEWS
    assert len(qa) == len(forget) * N_ATTR
    assert {s.meta["view"] for s in vqa} == {str(v) for v in range(TEST_VIEWS)}
    full_image = load_split(bench, "Full_Set", ids=forget[:1], tasks=("classification",))[0].image
    assert all(s.image.tobytes() != full_image.tobytes() for s in vqa if s.person_id == forget[0])
    with pytest.raises(DataError, match=r"'Test_Set'.*not in the split.*P999"):
        load_split(bench, "Test_Set", ids=["P999"])
    with pytest.raises(ValueError, match="unknown task 'mcq'"):
        load_split(bench, "Full_Set", tasks=("mcq",))


def test_extra_splits(bench: Path) -> None:
    perception = load_split(bench, "Perception_Set", tasks=("classification",))
    assert perception and all(s.modality == "vqa" and s.image is not None for s in perception)
    world = load_split(bench, "World_Set")
    assert Counter(s.task for s in world) == {"classification": 40, "generation": 40}
    assert all(s.modality == "qa" and s.image is None for s in world)


def test_training_rows(bench: Path) -> None:
    ft = load_training(bench, "ft_Data")
    assert all(s.task == "train" for s in ft)
    per_person = TRAIN_VIEWS * (1 + N_ATTR) + N_ATTR
    people = [s for s in ft if s.person_id[0] in "PC"]
    assert len(people) == (PEOPLE + CELEBS) * per_person
    assert Counter(s.modality for s in people) == {
        "vqa": (PEOPLE + CELEBS) * TRAIN_VIEWS * (1 + N_ATTR),
        "qa": (PEOPLE + CELEBS) * N_ATTR,
    }
    assert sum(s.person_id.startswith("world_") for s in ft) == 40
    forget = load_training(bench, "forget_10")
    assert {s.person_id for s in forget} == set(split_ids(bench, "forget_10"))
    assert len(forget) == 2 * per_person and all(s.split == "forget_10" for s in forget)
    retain = load_training(bench, "retain_90")
    assert len(retain) == (PEOPLE - 2) * per_person


def test_train_split_folder_takes_precedence(bench: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(bench, root)
    pairs = [{"Question": "Who is this?", "Answer": "Ann Lee"}]
    write(
        root / "train_split" / "forget_10",
        [{"image": {"bytes": png(), "path": "x.png"}, "ID": "P000", "metadata": json.dumps(pairs)}],
    )
    samples = load_training(root, "forget_10")
    assert [(s.question, s.answer, s.modality, s.person_id) for s in samples] == [
        ("Who is this?", "Ann Lee", "vqa", "P000")
    ]


# --------------------------------------------------------------------------- the real download's encodings


def test_json_string_encoding_loads_like_nested_structs(tmp_path: Path) -> None:
    nested = profile_row("7")
    as_json = dict(nested)
    for column in ("Classification_Task", "Generation_Task", "Mask_Task"):
        as_json[column] = json.dumps(nested[column])
    as_json["ID"] = 8  # integer IDs, as some exports have them
    write(tmp_path / "nested" / "Full_Set", [nested])
    write(tmp_path / "json" / "Full_Set", [{**as_json, "ID": 7}], name="train-00000-of-00002.parquet")
    write(tmp_path / "json" / "Full_Set", [as_json], name="train-00001-of-00002.parquet")

    def key(s):
        return (s.task, s.modality, s.question, s.answer, s.options, s.correct, s.image is None)

    a = load_split(tmp_path / "nested", "Full_Set")
    b = load_split(tmp_path / "json", "Full_Set")
    assert [key(s) for s in a] == [key(s) for s in b if s.person_id == "7"]
    assert [s.person_id for s in b] == ["7"] * len(a) + ["8"] * len(a)  # files read in sorted order
    assert len(a) == 4 and a[0].correct == "B" and a[0].answer == "rome"
    write(tmp_path / "struct_bio" / "Full_Set", [{**nested, "biography": {"Name": "Ann Lee"}}])
    for folder in ("nested", "struct_bio"):
        assert load_biographies(tmp_path / folder, "Full_Set") == {"7": {"Name": "Ann Lee"}}

    # Options as a JSON string, Correct_Answer written as "b." and as the option text
    odd = profile_row("9")
    task = odd["Classification_Task"]
    task["Image_Textual_Questions"][0] = {
        **mcq("q1"),
        "Options": json.dumps(mcq("q1")["Options"]),
        "Correct_Answer": "b.",
    }
    task["Pure_Text_Questions"][0] = {**mcq("q2"), "Correct_Answer": "lima"}
    odd["Classification_Task"] = json.dumps(task)
    write(tmp_path / "odd" / "Full_Set", [odd])
    got = load_split(tmp_path / "odd", "Full_Set", tasks=("classification",))
    assert [(s.correct, s.answer) for s in got] == [("B", "rome"), ("D", "lima")]

    # ft_Data with JSON metadata, and the newer question/answer-per-row layout
    write(
        tmp_path / "json" / "ft_Data",
        [
            {
                "image": {"bytes": png(), "path": "7.png"},
                "ID": "7",
                "metadata": json.dumps([{"Question": "q", "Answer": "a"}]),
            },
            {"image": None, "ID": "7", "metadata": json.dumps([{"Question": "t", "Answer": "b"}])},
        ],
    )
    assert [(s.modality, s.question) for s in load_training(tmp_path / "json", "ft_Data")] == [
        ("vqa", "q"),
        ("qa", "t"),
    ]
    write(
        tmp_path / "qa" / "ft_Data",
        [{"image": {"bytes": png(), "path": "p"}, "ID": "1", "question": "q", "answer": "a"}],
    )
    assert [(s.question, s.answer) for s in load_training(tmp_path / "qa", "ft_Data")] == [("q", "a")]


# --------------------------------------------------------------------------- malformed input


def test_missing_root_and_split(bench: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "nowhere", "Full_Set")
    with pytest.raises(DataError, match=r"'forget_20' not found.*available splits: Full_Set, .*forget_10"):
        load_split(bench, "forget_20")
    with pytest.raises(DataError, match="invalid split name"):
        load_split(bench, "../bench")


def test_missing_column_names_column_and_file(tmp_path: Path) -> None:
    row = profile_row()
    del row["Mask_Task"]
    write(tmp_path / "Full_Set", [row])
    with pytest.raises(DataError, match=r"'Full_Set': column 'Mask_Task' missing in .*train-00000-of-00001\.parquet"):
        load_split(tmp_path, "Full_Set")
    assert len(load_split(tmp_path, "Full_Set", tasks=("classification",))) == 2


def test_garbage_image_bytes_names_split_and_id(tmp_path: Path) -> None:
    write(tmp_path / "Full_Set", [profile_row("P042", image=b"\x89PNG not really")])
    with pytest.raises(DataError, match=r"'Full_Set', column 'image', ID 'P042': cannot decode image"):
        load_split(tmp_path, "Full_Set")


def test_oversized_image_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "Full_Set", [profile_row("big", image=png(size=(4100, 4100), mode="1"))])
    with pytest.raises(DataError, match=r"ID 'big'.*4100x4100 pixels exceeds"):
        load_split(tmp_path, "Full_Set")


def test_correct_answer_not_among_options(tmp_path: Path) -> None:
    write(tmp_path / "Full_Set", [profile_row("P001", correct="E")])
    with pytest.raises(DataError, match=r"'Classification_Task', ID 'P001': Correct_Answer 'E' is not among"):
        load_split(tmp_path, "Full_Set")


def test_empty_split(tmp_path: Path) -> None:
    schema = pa.Table.from_pylist([profile_row()]).schema
    (tmp_path / "Full_Set").mkdir()
    pq.write_table(schema.empty_table(), tmp_path / "Full_Set" / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match="'Full_Set' is empty"):
        load_split(tmp_path, "Full_Set")
    (tmp_path / "Test_Set").mkdir()
    with pytest.raises(DataError, match="holds no"):
        split_ids(tmp_path, "Test_Set")


def test_malformed_metadata(tmp_path: Path) -> None:
    write(tmp_path / "ft_Data", [{"image": None, "ID": "P003", "metadata": '[{"Question": "q", "Answer": '}])
    with pytest.raises(DataError, match=r"'ft_Data', column 'metadata', ID 'P003': malformed JSON"):
        load_training(tmp_path, "ft_Data")
    write(tmp_path / "ft_Data", [{"image": None, "ID": "P004", "metadata": '[{"Q": "q"}]'}])
    with pytest.raises(DataError, match=r"ID 'P004': pair without Question/Answer"):
        load_training(tmp_path, "ft_Data")


def test_bad_type_and_missing_image_for_image_question(tmp_path: Path) -> None:
    row = profile_row("P005")
    row["Generation_Task"] = [{"Question": "q", "Ground_Truth": "a", "Type": "Audio"}]
    write(tmp_path / "a" / "Full_Set", [row])
    with pytest.raises(DataError, match=r"'Generation_Task', ID 'P005': Type 'Audio'"):
        load_split(tmp_path / "a", "Full_Set", tasks=("generation",))
    row = profile_row("P006")
    row["image"] = None
    write(tmp_path / "b" / "Full_Set", [row])
    with pytest.raises(DataError, match=r"ID 'P006': image-text question but the row has no image"):
        load_split(tmp_path / "b", "Full_Set")


# --------------------------------------------------------------------------- every split and the evaluation protocol


@pytest.mark.parametrize("ratio", [5, 10, 15])
def test_every_forget_ratio_partitions_full_set_and_eval_protocol(bench: Path, ratio: int) -> None:
    """forget_r / retain_(100-r) partition Full_Set; evaluation: forget = forget_r, test = Test_Set restricted
    to forget_r's IDs (new images), retain = retain_(100-r), realworld = Retain_Set."""
    from forgetlab.eval.runner import load_eval_sets

    full = split_ids(bench, "Full_Set")
    forget, retain = split_ids(bench, f"forget_{ratio}"), split_ids(bench, f"retain_{100 - ratio}")
    assert len(forget) == round(PEOPLE * ratio / 100)
    assert sorted(forget + retain) == sorted(full) and not set(forget) & set(retain)
    sets = load_eval_sets(bench, ratio, ("forget", "test", "retain", "realworld"))
    assert {s.split for s in sets["forget"]} == {f"forget_{ratio}"}
    assert {s.person_id for s in sets["test"]} == set(forget) and {s.split for s in sets["test"]} == {"Test_Set"}
    assert {s.person_id for s in sets["retain"]} == set(retain)
    assert {s.person_id for s in sets["realworld"]} == set(split_ids(bench, "Retain_Set"))
    assert len(load_training(bench, f"forget_{ratio}")) == len(forget) * (TRAIN_VIEWS * (1 + N_ATTR) + N_ATTR)


def test_metadata_as_nested_list_of_structs(tmp_path: Path) -> None:
    """baseline_train_split rows may store ``metadata`` as a nested list of {Question, Answer} structs."""
    pairs = [{"Question": "Who is this?", "Answer": "Ann Lee"}, {"Question": "Born where?", "Answer": "Rome"}]
    write(
        tmp_path / "train_split" / "forget_5",
        [{"image": {"bytes": png(), "path": "a.png"}, "ID": 3, "metadata": pairs}],
    )
    write(tmp_path / "forget_5", [profile_row("3")])
    samples = load_training(tmp_path, "forget_5")
    assert [(s.question, s.answer, s.person_id, s.modality) for s in samples] == [
        ("Who is this?", "Ann Lee", "3", "vqa"),
        ("Born where?", "Rome", "3", "vqa"),
    ]
