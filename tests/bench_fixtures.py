"""Small CLEAR and TOFU folders written in each benchmark's exact published schema (tests only).

CLEAR (``therem/CLEAR``): one folder per config holding ``train-00000-of-00001.parquet``; images are
HF ``Image`` features, i.e. structs ``{bytes: binary, path: string}`` of encoded PNG/JPEG;
``perturbed_names``/``perturbed_captions``/``options`` are ``list<string>``; ``+tofu`` configs have
``image, caption, question, answer`` with image rows (question/answer null) followed by TOFU's text
rows (image/caption null, 20 per author). TOFU (``locuslab/TOFU``): ``<config>.json`` files holding
JSON lines; ``perturbed_answer`` is a list of strings.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

#: fictitious authors: the first FORGET are the forget people of the fixture's forget01 / forget05 / forget10
AUTHORS = ["Basil Mahfouz", "Nikolai Abilov", "Hina Ameen", "Xin Lee", "Moshe Ben-David", "Kalkidan Abera"]
FORGET = 2
IMAGES_PER_AUTHOR = 2
QA_PER_AUTHOR = 20
WRONG = ["Ada Okoro", "Jon Varga", "Lia Moreau", "Tomas Ruiz"]

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(seed: int, size: int = 16) -> bytes:
    """A small distinct RGB PNG."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), ((37 * seed) % 256, (91 * seed) % 256, (53 * seed) % 256)).save(buf, "PNG")
    return buf.getvalue()


def _image(seed: int) -> dict:
    return {"bytes": png(seed), "path": f"{seed}.png"}


def _write(folder: Path, rows: list[dict], schema: pa.Schema) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "train-00000-of-00001.parquet")


def _face_rows(authors: list[str], start: int) -> list[dict]:
    rows = []
    for a, name in enumerate(authors):
        for k in range(IMAGES_PER_AUTHOR):
            seed = start + a * IMAGES_PER_AUTHOR + k
            rows.append({"image": _image(seed), "caption": f"{name} stands by a window, view {k}.", "name": name})
    return rows


def _tofu_rows(authors: list[str]) -> list[dict]:
    """TOFU-like QA: 20 per author; only some questions name the author (as in TOFU)."""
    rows = []
    for name in authors:
        for q in range(QA_PER_AUTHOR):
            subject = name if q % 4 == 0 else "this author"
            rows.append({"question": f"What is fact {q} about {subject}?", "answer": f"Fact {q} is x{q}."})
    return rows


def write_clear(root: Path, percent: int = 5, *, tofu: bool = True) -> Path:
    """CLEAR configs for one forget percentage: forget/retain (+tofu), perturbed, real_faces, real_world."""
    forget, retain = AUTHORS[:FORGET], AUTHORS[FORGET:]
    f, r = f"forget{percent:02d}", f"retain{100 - percent}"
    plain = pa.schema([("image", IMAGE_TYPE), ("caption", pa.string()), ("name", pa.string())])
    _write(root / f, _face_rows(forget, 0), plain)
    _write(root / r, _face_rows(retain, 100), plain)
    if tofu:
        schema = pa.schema(
            [("image", IMAGE_TYPE), ("caption", pa.string()), ("question", pa.string()), ("answer", pa.string())]
        )
        for config, authors, start in ((f, forget, 0), (r, retain, 100)):
            faces = [{**row, "question": None, "answer": None} for row in _face_rows(authors, start)]
            for row in faces:
                del row["name"]
            text = [{"image": None, "caption": None, **row} for row in _tofu_rows(authors)]
            _write(root / f"{config}+tofu", faces + text, schema)
    perturbed = pa.schema(
        [
            ("image", IMAGE_TYPE),
            ("caption", pa.string()),
            ("name", pa.string()),
            ("perturbed_captions", pa.list_(pa.string())),
            ("paraphrased_caption", pa.string()),
            ("perturbed_names", pa.list_(pa.string())),
        ]
    )
    for config, authors, start in ((f"{f}_perturbed", forget, 0), ("retain_perturbed", retain, 100)):
        rows = [
            {
                **row,
                "perturbed_captions": [f"Someone else, {i}." for i in range(3)],
                "paraphrased_caption": f"A picture of {row['name']}.",
                "perturbed_names": WRONG[:3],
            }
            for row in _face_rows(authors, start)
        ]
        _write(root / config, rows, perturbed)
    faces = pa.schema([("image", IMAGE_TYPE), ("answer", pa.string()), ("options", pa.list_(pa.string()))])
    _write(root / "real_faces", [{"image": _image(500 + i), "answer": f"Celebrity {i}", "options": WRONG[:3]}
                                 for i in range(3)], faces)  # fmt: skip
    world = pa.schema(
        [
            ("question", pa.string()),
            ("answer", pa.string()),
            ("image", IMAGE_TYPE),
            ("prompt", pa.string()),
            ("options", pa.list_(pa.string())),
        ]
    )
    world_rows = [
        {"question": "What colour is the square?", "answer": c, "image": _image(600 + i), "prompt": "",
         "options": [o for o in ("red", "green", "blue", "white") if o != c]}
        for i, c in enumerate(("red", "green", "blue"))
    ]  # fmt: skip
    (root / "real_world").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(world_rows, schema=world), root / "real_world" / "test-00000-of-00001.parquet")
    return root


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _perturbed(rows: list[dict]) -> list[dict]:
    return [
        {**r, "paraphrased_answer": r["answer"].replace("is", "equals"),
         "perturbed_answer": [r["answer"].replace(f"x{i % QA_PER_AUTHOR}", w) for w in ("y", "z", "w")],
         "paraphrased_question": r["question"]}
        for i, r in enumerate(rows)
    ]  # fmt: skip


def write_tofu(root: Path, percent: int = 5, *, real: bool = True) -> Path:
    """TOFU configs as the repo stores them: ``<config>.json`` JSON lines."""
    forget, retain = _tofu_rows(AUTHORS[:FORGET]), _tofu_rows(AUTHORS[FORGET:])
    f = f"forget{percent:02d}"
    _jsonl(root / "full.json", retain + forget)
    _jsonl(root / f"{f}.json", forget)
    _jsonl(root / f"retain{100 - percent}.json", retain)
    _jsonl(root / f"holdout{percent:02d}.json", _tofu_rows(["Holdout Author", "Other Holdout"]))
    _jsonl(root / f"{f}_perturbed.json", _perturbed(forget))
    _jsonl(root / "retain_perturbed.json", _perturbed(retain[:QA_PER_AUTHOR]))
    if real:
        facts = [{"question": f"What is the capital of country {i}?", "answer": f"City {i}"} for i in range(4)]
        _jsonl(root / "world_facts_perturbed.json", [
            {**r, "paraphrased_answer": r["answer"], "perturbed_answer": [f"Town {i}", f"Village {i}"]}
            for i, r in enumerate(facts)
        ])  # fmt: skip
        _jsonl(root / "real_authors_perturbed.json", [
            {"question": f"Who wrote book {i}?", "answer": f"Writer {i}", "paraphrased_answer": f"Writer {i}",
             "perturbed_answer": [f"Poet {i}", f"Novelist {i}"]}
            for i in range(4)
        ])  # fmt: skip
    return root
