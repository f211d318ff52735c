"""Loader fuzzing: malformed rows give a DataError (or a counted, reported skip), never a traceback
from inside pyarrow, PIL or json.

Rows are drawn near the real schema — keys present or missing, right or wrong types, None, empty
lists, huge strings, options without the correct letter, duplicate IDs, overlapping forget and
retain splits — and written as real parquet / JSON files. Any exception other than DataError
fails the test.
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from forgetlab.data import clear, tofu
from forgetlab.data.mllmu import DataError, DataWarning, load_biographies, load_split, load_training, split_ids
from forgetlab.data.schema import Sample

FUZZ = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


def _png(size: tuple[int, int] = (4, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()
HUGE = "x" * 200_000

junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
text = st.text(max_size=20) | st.just("") | st.just(HUGE) | junk
letters = st.sampled_from(["A", "B", "C", "D", "E", "(b)", "b.", "", "Z"]) | junk
options = (
    st.dictionaries(st.sampled_from("ABCDE"), text, max_size=5)
    | st.lists(text, max_size=5)
    | st.dictionaries(st.sampled_from("ABCD"), text, max_size=4).map(json.dumps)
    | junk
)
mcq = st.fixed_dictionaries({}, optional={"Question": text, "Options": options, "Correct_Answer": letters}) | junk
classification = (
    st.fixed_dictionaries(
        {},
        optional={
            "Image_Textual_Questions": st.lists(mcq, max_size=3),
            "Pure_Text_Questions": st.lists(mcq, max_size=3),
        },
    )
    | junk
)
types = st.sampled_from(["Image_Textual", "Pure_Text", "Audio"]) | junk
open_item = st.fixed_dictionaries({}, optional={"Question": text, "Ground_Truth": text, "Type": types}) | junk
images = st.sampled_from(
    [
        {"bytes": PNG, "path": "p.png"},
        {"bytes": b"\x89PNG garbage", "path": "p.png"},
        {"bytes": b"", "path": None},
        {"bytes": None, "path": "/etc/passwd"},
        None,
    ]
)
ids = st.sampled_from(["P1", "P2", "P3", "", " "]) | st.none() | st.text(max_size=4)
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _json_or_none(value: object) -> str | None:
    return None if value is None else json.dumps(value)


eval_rows = st.lists(
    st.fixed_dictionaries(
        {
            "ID": ids,
            "image": images,
            "Classification_Task": classification.map(_json_or_none),
            "Generation_Task": st.lists(open_item, max_size=3).map(json.dumps) | junk.map(_json_or_none),
            "Mask_Task": st.lists(open_item, max_size=3).map(json.dumps) | junk.map(_json_or_none),
            "biography": junk.map(_json_or_none) | st.just("{not json"),
        }
    ),
    max_size=4,
)
EVAL_SCHEMA = pa.schema(
    [("ID", pa.string()), ("image", IMAGE_TYPE), ("Classification_Task", pa.string()),
     ("Generation_Task", pa.string()), ("Mask_Task", pa.string()), ("biography", pa.string())]
)  # fmt: skip
pairs = st.fixed_dictionaries({}, optional={"Question": text, "Answer": text}) | junk
train_rows = st.lists(
    st.fixed_dictionaries(
        {
            "ID": ids,
            "image": images,
            "metadata": st.lists(pairs, max_size=3).map(json.dumps) | pairs.map(json.dumps) | st.just("[{"),
        }
    ),
    max_size=4,
)
TRAIN_SCHEMA = pa.schema([("ID", pa.string()), ("image", IMAGE_TYPE), ("metadata", pa.string())])


def write(folder: Path, rows: list[dict], schema: pa.Schema) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "train-00000-of-00001.parquet")


def loads_or_data_error(fn, *args, **kwargs) -> list | dict | None:
    """``fn(*args)``, or None when it raised a DataError; any other exception propagates (= test failure)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)  # a counted, reported skip is an accepted outcome
            return fn(*args, **kwargs)
    except DataError as err:
        assert str(err).strip() and "\n" not in str(err).strip()  # one readable line
        return None


def check_samples(samples: list[Sample] | None) -> None:
    for s in samples or []:
        assert isinstance(s.question, str) and isinstance(s.answer, str) and s.person_id
        assert s.modality in ("vqa", "qa") and (s.image is None or s.image.mode == "RGB")
        assert s.options is None or (s.correct in s.options and len(s.options) >= 2)


@FUZZ
@given(rows=eval_rows)
def test_evaluation_split_rows(rows: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as root:
        write(Path(root) / "Full_Set", rows, EVAL_SCHEMA)
        check_samples(loads_or_data_error(load_split, root, "Full_Set"))
        loads_or_data_error(load_biographies, root, "Full_Set")
        loads_or_data_error(split_ids, root, "Full_Set")


MISSING = object()
#: where a mutation lands in a valid row (Q = an MCQ list)
Q = ("Classification_Task", "Image_Textual_Questions")
P = ("Classification_Task", "Pure_Text_Questions")
PATHS = [
    ("ID",), ("biography",), ("Classification_Task",), Q, (*Q, 0), (*Q, 0, "Question"), (*Q, 0, "Options"),
    (*Q, 0, "Options", "B"), (*Q, 0, "Correct_Answer"), P, (*P, 0, "Options"), (*P, 0, "Correct_Answer"),
    ("Generation_Task",), ("Generation_Task", 0), ("Generation_Task", 0, "Type"), ("Generation_Task", 0, "Question"),
    ("Generation_Task", 0, "Ground_Truth"), ("Mask_Task",), ("Mask_Task", 0, "Type"),
]  # fmt: skip
replacements = (
    st.sampled_from([MISSING, None, [], {}, "", HUGE, "E", "Z", "Audio", 7, 2.5, True, [None], {"A": None}]) | junk
)


def valid_row(pid: str) -> dict:
    mcqs = [{"Question": "Where was Ann born?", "Options": {"A": "paris", "B": "rome", "C": "oslo"},
             "Correct_Answer": "B"}]  # fmt: skip
    return {
        "ID": pid,
        "image": {"bytes": PNG, "path": f"{pid}.png"},
        "biography": {"Name": "Ann"},
        "Classification_Task": {
            "Image_Textual_Questions": json.loads(json.dumps(mcqs)),
            "Pure_Text_Questions": json.loads(json.dumps(mcqs)),
        },
        "Generation_Task": [{"Question": "Where?", "Ground_Truth": "rome", "Type": "Pure_Text"}],
        "Mask_Task": [{"Question": "Born in ___.", "Ground_Truth": "rome", "Type": "Image_Textual"}],
    }


def mutate(row: dict, path: tuple, value: object) -> None:
    """Set (or with MISSING, delete) ``row[path]``; a path through a missing or non-container part is skipped."""
    node = row
    for key in path[:-1]:
        ok = (isinstance(node, dict) and key in node) or (
            isinstance(node, list) and isinstance(key, int) and key < len(node)
        )
        if not ok:
            return
        node = node[key]
    last = path[-1]
    if isinstance(node, dict) and value is MISSING:
        node.pop(last, None)
    elif isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        if value is MISSING:
            node.pop(last)
        else:
            node[last] = value


def encode(row: dict) -> dict:
    """The row in EVAL_SCHEMA: nested columns as JSON strings, IDs as text."""
    out = {
        "ID": row.get("ID") if isinstance(row.get("ID"), (str, type(None))) else str(row["ID"]),
        "image": row["image"],
    }
    for column in ("Classification_Task", "Generation_Task", "Mask_Task", "biography"):
        out[column] = _json_or_none(row.get(column))
    return out


@st.composite
def mutated_rows(draw) -> list[dict]:
    """Valid rows (IDs drawn from three, so duplicates occur) with 0-2 mutations each somewhere."""
    rows = [valid_row(pid) for pid in draw(st.lists(st.sampled_from(["P1", "P2", "P3"]), min_size=1, max_size=3))]
    for _ in range(draw(st.integers(0, 2))):
        mutate(draw(st.sampled_from(rows)), draw(st.sampled_from(PATHS)), draw(replacements))
    return [encode(r) for r in rows]


@FUZZ
@given(rows=mutated_rows())
def test_valid_rows_with_one_or_two_faults(rows: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as root:
        write(Path(root) / "Full_Set", rows, EVAL_SCHEMA)
        check_samples(loads_or_data_error(load_split, root, "Full_Set"))
        loads_or_data_error(load_biographies, root, "Full_Set")


@FUZZ
@given(rows=train_rows)
def test_training_rows(rows: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as root:
        write(Path(root) / "ft_Data", rows, TRAIN_SCHEMA)
        check_samples(loads_or_data_error(load_training, root, "ft_Data"))


@FUZZ
@given(forget=st.sets(st.sampled_from("ABCDEF"), max_size=3), retain=st.sets(st.sampled_from("ABCDEF"), max_size=4))
def test_forget_and_retain_overlap_is_refused(forget: set[str], retain: set[str]) -> None:
    with tempfile.TemporaryDirectory() as root:
        for split, people in (("forget_10", forget), ("retain_90", retain)):
            write(
                Path(root) / split, [{"ID": p, "image": None, "metadata": "[]"} for p in sorted(people)], TRAIN_SCHEMA
            )
        ft = [{"ID": p, "image": None, "metadata": json.dumps([{"Question": "q", "Answer": p}])} for p in "ABCDEF"]
        write(Path(root) / "ft_Data", ft, TRAIN_SCHEMA)
        got = loads_or_data_error(load_training, root, "forget_10")
        if forget & retain:
            assert got is None
        elif forget:
            assert sorted(s.answer for s in got) == sorted(forget)


@FUZZ
@given(
    content=st.binary(max_size=300) | st.lists(junk, max_size=4).map(lambda rs: "\n".join(map(json.dumps, rs)).encode())
)
def test_json_configs_of_tofu_and_clear(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as root:
        for config in ("forget01", "forget01_perturbed", "real_faces"):
            (Path(root) / f"{config}.json").write_bytes(content)
        check_samples(loads_or_data_error(tofu.load_qa, root, "forget01"))
        loads_or_data_error(tofu.load_perturbed, root, "forget01_perturbed")
        check_samples(loads_or_data_error(clear.load_training, root, "forget01"))
        check_samples(loads_or_data_error(clear.real_mcqs, root, "real_faces"))


tofu_rows = st.lists(
    st.fixed_dictionaries(
        {}, optional={"question": text, "answer": text, "paraphrased_answer": text,
                      "perturbed_answer": st.lists(text, max_size=3) | text, "image": images,
                      "name": text, "caption": text, "perturbed_names": st.lists(text, max_size=3) | text}
    ),
    max_size=4,
)  # fmt: skip


@FUZZ
@given(rows=tofu_rows)
def test_tofu_and_clear_rows(rows: list[dict]) -> None:
    def encodable(v: object) -> object:  # JSON has no bytes: images are written as their repr
        return repr(v) if isinstance(v, dict) else v

    with tempfile.TemporaryDirectory() as root:
        lines = "\n".join(json.dumps({k: encodable(v) for k, v in r.items()}) for r in rows)
        for config in ("forget01", "forget01_perturbed"):
            (Path(root) / f"{config}.jsonl").write_text(lines)
        check_samples(loads_or_data_error(tofu.load_qa, root, "forget01"))
        loads_or_data_error(tofu.load_perturbed, root, "forget01_perturbed")
        check_samples(loads_or_data_error(clear.name_mcqs, root, "forget01_perturbed"))
        check_samples(loads_or_data_error(clear.caption_items, root, "forget01"))
