"""Untrusted benchmark files: image bombs, undecodable bytes, ``path`` fields, duplicates, overlaps,
corrupt files. Each gives one clear error (or a counted, reported skip) naming where it is."""

from __future__ import annotations

import io
import json
import struct
import sys
import time
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from bench_fixtures import write_clear, write_tofu
from forgetlab.benchmarks import load_benchmark
from forgetlab.cli import app
from forgetlab.data import clear
from forgetlab.data.mllmu import MAX_IMAGE_PIXELS, DataError, DataWarning, load_split

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
MCQ = {"Question": "Where was Ann born?", "Options": {"A": "paris", "B": "rome"}, "Correct_Answer": "B"}


def png(color=(200, 10, 10), size=(4, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that *declares* width x height but holds almost no data (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def row(pid: str, image: object) -> dict:
    return {
        "ID": pid,
        "image": image,
        "Classification_Task": json.dumps({"Image_Textual_Questions": [MCQ], "Pure_Text_Questions": [MCQ]}),
    }


def write(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("ID", pa.string()), ("image", IMAGE_TYPE), ("Classification_Task", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "train-00000-of-00001.parquet")


def mcqs(root: Path) -> list:
    return load_split(root, "Full_Set", tasks=("classification",))


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("side", [5000, 100_000])
def test_a_bomb_header_is_refused_before_decoding(tmp_path, side) -> None:
    assert side * side > MAX_IMAGE_PIXELS
    write(tmp_path / "Full_Set", [row("P042", {"bytes": png_header(side, side), "path": None})])
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"'Full_Set', column 'image', ID 'P042': image .*(exceeds|pixel limit)"):
        mcqs(tmp_path)
    assert time.perf_counter() - t0 < 2  # refused from the header: nothing was decompressed


@pytest.mark.parametrize(
    ("raw", "problem"),
    [(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "cannot decode image bytes"), (png()[:50], "cannot decode image bytes"),
     (b"", "cannot decode image bytes")],
    ids=["header-only", "truncated", "empty"],
)  # fmt: skip
def test_undecodable_bytes_name_split_id_and_problem(tmp_path, raw, problem) -> None:
    write(
        tmp_path / "Full_Set", [row("P001", {"bytes": png(), "path": None}), row("P007", {"bytes": raw, "path": None})]
    )
    with pytest.raises(DataError, match=rf"^split 'Full_Set', column 'image', ID 'P007': {problem}"):
        mcqs(tmp_path)


def test_clear_images_name_config_row_and_person(tmp_path) -> None:
    root = write_clear(tmp_path / "CLEAR", percent=5)
    table = pq.read_table(root / "forget05" / "train-00000-of-00001.parquet").to_pylist()
    table[1]["image"] = {"bytes": png_header(9000, 9000), "path": None}
    pq.write_table(pa.Table.from_pylist(table), root / "forget05" / "train-00000-of-00001.parquet")
    name = table[1]["name"]
    with pytest.raises(DataError, match=rf"'forget05', column 'image', ID '{name}': image of 9000x9000 pixels exceeds"):
        clear.load_training(root, "forget05")


@pytest.fixture
def opened() -> list[str]:
    """Paths opened through Python while the test runs (an audit hook; PIL's ``Image.open(path)`` goes there)."""
    seen: list[str] = []
    active = [True]

    def hook(event: str, args: tuple) -> None:
        if active[0] and event == "open" and isinstance(args[0], (str, bytes, Path)):
            seen.append(str(args[0]))

    sys.addaudithook(hook)
    yield seen
    active[0] = False  # audit hooks cannot be removed; this one goes quiet


def test_path_fields_are_never_opened(tmp_path, opened) -> None:
    decoy = tmp_path / "decoy.png"
    decoy.write_bytes(png(color=(0, 0, 255)))  # a perfectly readable image: reading it would "work"
    opened.clear()
    for target in (str(decoy), "/etc/passwd"):
        write(tmp_path / "a" / "Full_Set", [row("P009", {"bytes": None, "path": target})])
        with pytest.raises(DataError, match=r"ID 'P009': image has no embedded bytes"):
            mcqs(tmp_path / "a")
    write(tmp_path / "b" / "Full_Set", [row("P010", {"bytes": png(color=(200, 10, 10)), "path": str(decoy)})])
    (sample, *_) = mcqs(tmp_path / "b")
    assert sample.image.getpixel((0, 0)) == (200, 10, 10)  # the embedded bytes, not the file at `path`
    assert not [p for p in opened if p in (str(decoy), "/etc/passwd")]


# --------------------------------------------------------------------------- rows and files


def test_exact_duplicate_rows_are_skipped_and_reported(tmp_path) -> None:
    image = {"bytes": png(), "path": "a.png"}
    write(tmp_path / "Full_Set", [row("P1", image), row("P2", image), row("P1", image), row("P1", image)])
    with pytest.warns(DataWarning, match=r"'Full_Set': 2 exact duplicate row\(s\) skipped, IDs \['P1', 'P1'\]"):
        samples = mcqs(tmp_path)
    assert [s.person_id for s in samples] == ["P1", "P1", "P2", "P2"]  # one VQA + one QA question per person


def test_conflicting_duplicate_ids_are_an_error(tmp_path) -> None:
    write(tmp_path / "Full_Set", [row("P1", {"bytes": png(), "path": None}), row("P1", None)])
    with pytest.raises(DataError, match=r"'Full_Set': ID 'P1' appears in rows 0 and 1 with different content"):
        mcqs(tmp_path)


def test_corrupt_parquet_and_deeply_nested_json(tmp_path) -> None:
    (tmp_path / "a" / "Full_Set").mkdir(parents=True)
    (tmp_path / "a" / "Full_Set" / "train.parquet").write_bytes(b"PAR1" + b"\xff" * 100)
    with pytest.raises(DataError, match=r"split 'Full_Set': cannot read parquet file .*train\.parquet"):
        mcqs(tmp_path / "a")
    deep = row("P1", None)
    deep["Classification_Task"] = "[" * 100_000 + "]" * 100_000
    write(tmp_path / "b" / "Full_Set", [deep])
    with pytest.raises(DataError, match=r"ID 'P1': JSON nested too deeply"):
        mcqs(tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "forget01.json").write_text("[" * 100_000)
    (tmp_path / "c" / "retain99.json").write_bytes(b"\xff\xfe not utf-8")
    from forgetlab.data import tofu

    with pytest.raises(DataError, match=r"forget01\.json: malformed JSON \(RecursionError"):
        tofu.load_qa(tmp_path / "c", "forget01")
    with pytest.raises(DataError, match=r"cannot read .*retain99\.json as UTF-8"):
        tofu.load_qa(tmp_path / "c", "retain99")


def test_overlapping_forget_and_retain_sets(tmp_path) -> None:
    """A shared person is an error; a shared text fact is dropped from the retain set and reported."""
    root = write_tofu(tmp_path / "TOFU", percent=5)
    forget = (root / "forget05.json").read_text().splitlines()
    with (root / "retain95.json").open("a") as f:
        f.write(forget[3] + "\n")  # one more forgotten fact in the retain set
    with pytest.warns(
        DataWarning, match=r"tofu: \d+ retain question/answer pair\(s\) also in the forget set were dropped"
    ):
        data = load_benchmark("tofu", root, 5)
    facts = {(s.question, s.answer) for s in data.forget}
    assert data.retain and not [s for s in data.retain if (s.question, s.answer) in facts]
    root = write_clear(tmp_path / "CLEAR", percent=5)
    table = pq.read_table(root / "retain95" / "train-00000-of-00001.parquet").to_pylist()
    forget_name = pq.read_table(root / "forget05" / "train-00000-of-00001.parquet").column("name")[0].as_py()
    table[0]["name"] = forget_name
    pq.write_table(pa.Table.from_pylist(table), root / "retain95" / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match=rf"clear: the forget and retain sets share 1 people, e.g. \['{forget_name}'"):
        load_benchmark("clear", root, 5, text=False)


def test_commands_print_one_line_for_malformed_data(tmp_path) -> None:
    write(tmp_path / "data" / "forget_10", [row("P1", {"bytes": b"junk", "path": "/etc/passwd"})])
    (tmp_path / "data" / "ft_Data").mkdir()
    result = CliRunner().invoke(app, ["unlearn", "--method", "ga", "--model", str(tmp_path / "m"), "--data",
                                      str(tmp_path / "data"), "--out", str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("error: split 'ft_Data'") and len(result.output.strip().splitlines()) == 1


def test_a_study_on_malformed_data_fails_in_one_line(tiny_bench, tmp_path) -> None:
    """``forgetlab run``: an undecodable image in the benchmark folder a study names is one error line naming
    the split and the person, not a traceback from inside the pipeline."""
    import shutil

    import yaml

    from forgetlab.models.tiny import build_tiny_model, save_model
    from forgetlab.train.finetune import benchmark_texts

    root = Path(shutil.copytree(tiny_bench, tmp_path / "data"))
    model, processor = build_tiny_model("llava", benchmark_texts(root), image_size=16)
    save_model(model, processor, tmp_path / "model")
    path = next((root / "forget_10").glob("*.parquet"))
    rows = pq.read_table(path).to_pylist()
    pid = rows[0]["ID"]
    rows[0]["image"] = {"bytes": b"junk", "path": "/etc/passwd"}
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)
    study = {"name": "bad", "benchmark": {"kind": "mllmu", "path": str(root)}, "forget_ratio": 10,
             "model": {"source": "path", "path": str(tmp_path / "model")}, "workers": 1}  # fmt: skip
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(study))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: split 'forget_10', column 'image', ID '{pid}': cannot decode image bytes"
    ), result.output
