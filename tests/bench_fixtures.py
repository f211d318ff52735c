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


# --------------------------------------------------------------------------- MLLMU-Bench, real schema

MLLMU_PEOPLE = [f"{i}" for i in range(1, 21)]  # IDs as in the download: numbers as strings
CITIES = ["Oslo", "Lima", "Rome", "Kyiv", "Pune"]
JOBS = ["baker", "pilot", "nurse", "judge", "mason"]


def _mcq(question: str, answer: str, pool: list[str], seed: int) -> dict:
    wrong = [x for x in pool if x != answer][:3]
    letters = "ABCD"
    slot = seed % 4
    options = wrong[:slot] + [answer] + wrong[slot:]
    return {"Question": question, "Options": dict(zip(letters, options, strict=True)), "Correct_Answer": letters[slot]}


def _profile(pid: int, name: str, *, images: int | None = None) -> dict:
    city, job = CITIES[pid % 5], JOBS[(pid // 2) % 5]
    image = {"bytes": png(pid), "path": f"{pid}.png"}
    row = {
        "ID": str(pid),
        "biography": json.dumps({"Name": name, "Born": city, "Job": job}),
        "question": f"Where was {name} born?",
        "answer": city,
        "Classification_Task": {
            "Image_Textual_Questions": [
                _mcq("Where was the person in the image born?", city, CITIES, pid),
                _mcq("What is the job of the person in the image?", job, JOBS, pid + 1),
            ],
            "Pure_Text_Questions": [
                _mcq(f"Where was {name} born?", city, CITIES, pid + 2),
                _mcq(f"What is the job of {name}?", job, JOBS, pid + 3),
            ],
        },
        "Generation_Task": [
            {"Question": "What is the job of the person in the image?", "Ground_Truth": f"A {job}.",
             "Type": "Image_Textual"},
            {"Question": f"Where was {name} born?", "Ground_Truth": f"In {city}.", "Type": "Pure_Text"},
        ],
        "Mask_Task": [{"Question": "The person in the image was born in ___.", "Ground_Truth": city,
                       "Type": "Image_Textual"}],
    }  # fmt: skip
    if images is None:
        return {"image": image} | row
    return {"images": [{"bytes": png(pid * 100 + k), "path": f"{pid}_{k}.png"} for k in range(images)]} | row


def _train_row(pid: int, name: str) -> dict:
    """A ``baseline_train_split`` row: one image, its question/answer pairs as a JSON ``metadata`` string."""
    city, job = CITIES[pid % 5], JOBS[(pid // 2) % 5]
    pairs = [
        {"Question": "Where was the person in the image born?", "Answer": f"This person was born in {city}."},
        {"Question": "What is the job of the person in the image?", "Answer": f"This person is a {job}."},
    ]
    return {"ID": str(pid), "image": {"bytes": png(pid), "path": f"{pid}.png"}, "metadata": json.dumps(pairs)}


def write_mllmu(root: Path, percent: int = 10) -> Path:
    """A 20-person MLLMU-Bench folder in the published schema: ``Full_Set``, ``Test_Set`` (``images`` lists),
    ``forget_<p>`` / ``retain_<100-p>`` profile rows, ``Retain_Set`` (3 celebrities), and the
    ``baseline_train_split`` training rows under ``train_split/``, every one with an image (no text-only
    training rows, no holdout people: unlike the embedded benchmark)."""
    people = {int(p): f"Person{p} Name{p}" for p in MLLMU_PEOPLE}
    n_forget = max(2, round(len(people) * percent / 100))
    forget = sorted(people)[:n_forget]

    def write(folder: Path, rows: list[dict]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000-of-00001.parquet")

    write(root / "Full_Set", [_profile(p, n) for p, n in people.items()])
    write(root / "Test_Set", [_profile(p, n, images=2) for p, n in people.items()])
    write(root / f"forget_{percent}", [_profile(p, n) for p, n in people.items() if p in forget])
    write(root / f"retain_{100 - percent}", [_profile(p, n) for p, n in people.items() if p not in forget])
    write(root / "Retain_Set", [_profile(p, f"Celebrity {p}") for p in (901, 902, 903)])
    write(root / "train_split" / f"forget_{percent}", [_train_row(p, n) for p, n in people.items() if p in forget])
    write(root / "train_split" / f"retain_{100 - percent}",
          [_train_row(p, n) for p, n in people.items() if p not in forget])  # fmt: skip
    return root


def tiny_causal_lm(texts: list[str], max_positions: int = 512):
    """(model, tokenizer): a freshly initialised (seed 0) 2-layer Qwen2 text LM over the words of ``texts``."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from forgetlab.models.tiny import build_tokenizer

    tok = build_tokenizer(texts, "llava")
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=max_positions, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config), tok
