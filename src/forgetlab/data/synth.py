"""The embedded synthetic benchmark, written in the real MLLMU-Bench file format.

``write_benchmark(out)`` draws fictitious people (procedural portraits + a profile of
single-word attributes), "celebrities" (stand-ins for the real celebrities of
MLLMU-Bench's ``Retain_Set``), generic perception images and world-knowledge facts, and
writes them as one parquet file per split folder exactly like the MLLMU-Bench download,
so that one loader (:mod:`forgetlab.data.mllmu`) reads both.

Everything is a pure function of the arguments: the same seed gives byte-identical
parquet files. Each kind of randomness has its own seeded stream, so e.g. changing
``test_views`` does not change the training renderings.

Split / ID naming:

- fictitious people ``P000``..; celebrities ``C000``..; held-out perception images
  ``perc_0000``..; perception training images (``ft_Data`` only) ``perctrain_0000``..;
  world facts ``world_000``.. (same ID in ``ft_Data`` and ``World_Set``).
- ``Full_Set`` = all fictitious people (canonical portrait); ``forget_5/10/15`` are
  nested subsets of it (a seeded permutation), ``retain_95/90/85`` their complements;
  ``Test_Set`` = the same people, ``test_views`` new renderings each; ``Retain_Set`` =
  celebrities; ``ft_Data`` = the fine-tuning rows; ``Perception_Set`` and ``World_Set``
  are our extra evaluation splits.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from forgetlab.data.portraits import (
    COUNT_WORDS,
    FEATURE_VALUES,
    SHAPE_BACKGROUNDS,
    SHAPE_COLOURS,
    SHAPES,
    FaceFeatures,
    RenderView,
    ShapeScene,
    all_feature_combinations,
    random_view,
    render_portrait,
    render_shapes,
)
from forgetlab.data.schema import (
    EVAL_SPLITS,
    EXTRA_SPLITS,
    FORGET_RATIOS,
    FT_SPLIT,
    HOLDOUT_SPLIT,
    forget_split,
    retain_split,
)

#: bump when the generated content (or a default) changes for the same arguments.
#: 4: eight training renderings per person by default (was four): with four, test VQA (new
#: renderings) stayed at 0.80-0.85 while the same model named every test face correctly; with
#: eight it reached 0.89 at the same training cost (each epoch still shows two views per question).
VERSION = 4
MARKER = "forgetlab_synth.json"
GENERATOR = "forgetlab.data.synth"
PARQUET_NAME = "train-00000-of-00001.parquet"
LETTERS: tuple[str, ...] = ("A", "B", "C", "D")

# --------------------------------------------------------------------------- vocabulary

#: first names are unique per person, so one token identifies a person in text.
FIRST_NAMES: tuple[str, ...] = (
    "Alice", "Bruno", "Clara", "Dmitri", "Elena", "Felix", "Greta", "Hugo", "Irene", "Jonas",
    "Karla", "Leon", "Mira", "Nico", "Olga", "Pablo", "Quinn", "Rosa", "Stefan", "Tara",
    "Ulrich", "Vera", "Walter", "Xenia", "Yusuf", "Zora", "Anton", "Beatrix", "Cyril", "Dagmar",
    "Emil", "Flora", "Gustav", "Hilda", "Igor", "Jasmin", "Kurt", "Lidia", "Magnus", "Nadia",
    "Oscar", "Petra", "Rainer", "Sonja", "Tobias", "Ursula", "Viktor", "Wanda", "Arne", "Bettina",
    "Carlo", "Doris", "Edgar", "Fiona", "Gregor", "Helga", "Ivan", "Judith", "Kasimir", "Lena",
    "Marco", "Nora", "Otto", "Paula", "Ruben", "Selma", "Theo", "Uma", "Valentin", "Wilma",
    "Albert", "Brigitte", "Conrad", "Delia", "Erwin", "Frieda", "Georg", "Hanna", "Isidor", "Johanna",
    "Konrad", "Luisa", "Moritz", "Nina", "Oskar", "Pia", "Roland", "Sabine", "Timo", "Ute",
    "Vincent", "Xaver", "Adele", "Boris", "Cecilia", "Dario", "Esther", "Fabian", "Gisela", "Henrik",
    "Ida", "Jakob", "Klara", "Lothar", "Marta", "Norbert", "Ottilie", "Philipp", "Regina", "Samuel",
    "Thea", "Udo", "Vanessa", "Wolfgang", "Agnes", "Bernd", "Carmen", "Dieter", "Erika", "Frank",
    "Gloria", "Horst", "Inga", "Jens", "Karin", "Lukas", "Monika", "Niklas", "Olivia", "Patrick",
)  # fmt: skip
LAST_NAMES: tuple[str, ...] = (
    "Abbott", "Barker", "Carver", "Dalton", "Ellis", "Fenwick", "Garner", "Holt", "Irving", "Jarvis",
    "Keller", "Lowe", "Marsh", "Norris", "Oakley", "Prescott", "Quincy", "Rowe", "Sutton", "Thorne",
)  # fmt: skip

#: profile attributes (all single words) -> their value pools.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "birthplace": (
        "boston", "chicago", "denver", "seattle", "dallas",
        "miami", "austin", "portland", "phoenix", "atlanta",
    ),
    "occupation": (
        "teacher", "doctor", "farmer", "pilot", "chef", "lawyer", "nurse", "painter", "engineer", "baker",
    ),
    "hobby": (
        "chess", "fishing", "cycling", "gardening", "swimming",
        "hiking", "knitting", "surfing", "dancing", "skiing",
    ),
    "favourite_food": (
        "pizza", "sushi", "pasta", "tacos", "curry", "salad", "soup", "noodles", "burgers", "pancakes",
    ),
}  # fmt: skip
#: how an attribute is named inside a question.
ATTRIBUTE_PHRASES: dict[str, str] = {
    "birthplace": "birthplace",
    "occupation": "occupation",
    "hobby": "hobby",
    "favourite_food": "favourite food",
}

WHO_QUESTION = "Who is the person in the image?"
CLOZE = "___"


def vqa_question(attribute: str) -> str:
    """Question about the person shown in the image (Image_Textual)."""
    return f"What is the {ATTRIBUTE_PHRASES[attribute]} of the person in the image?"


def qa_question(attribute: str, name: str) -> str:
    """Question about a named person, without image (Pure_Text)."""
    return f"What is the {ATTRIBUTE_PHRASES[attribute]} of {name}?"


def vqa_cloze(attribute: str) -> str:
    """Fill-in-the-blank sentence about the person in the image."""
    return f"The {ATTRIBUTE_PHRASES[attribute]} of the person in the image is {CLOZE}."


def qa_cloze(attribute: str, name: str) -> str:
    """Fill-in-the-blank sentence about a named person."""
    return f"The {ATTRIBUTE_PHRASES[attribute]} of {name} is {CLOZE}."


#: perception questions on shape images: (key, question, value pool).
SHAPE_QUESTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("colour", "What colour are the shapes in the image?", tuple(SHAPE_COLOURS)),
    ("shape", "What shape are the objects in the image?", SHAPES),
    ("count", "How many shapes are in the image?", COUNT_WORDS),
    ("background", "What colour is the background of the image?", tuple(SHAPE_BACKGROUNDS)),
)
#: perception questions on random (non-benchmark) faces: feature -> question.
FACE_QUESTIONS: dict[str, str] = {
    "hair_colour": "What colour is the hair of the person in the image?",
    "hair_style": "What is the hair style of the person in the image?",
    "accessory": "What accessory does the person in the image wear?",
    "skin": "What is the skin tone of the person in the image?",
    "eye_colour": "What colour are the eyes of the person in the image?",
    "face_shape": "What is the face shape of the person in the image?",
}
#: features with fewer than 4 values are taught (ft_Data) and generated, never asked as MCQ.
FACE_MCQ_FEATURES: tuple[str, ...] = tuple(f for f in FACE_QUESTIONS if len(FEATURE_VALUES[f]) >= 4)

#: world knowledge: (category, question, answer); MCQ distractors come from the category.
WORLD_FACTS: tuple[tuple[str, str, str], ...] = (
    ("capital", "What is the capital of France?", "paris"),
    ("capital", "What is the capital of Germany?", "berlin"),
    ("capital", "What is the capital of Italy?", "rome"),
    ("capital", "What is the capital of Spain?", "madrid"),
    ("capital", "What is the capital of Japan?", "tokyo"),
    ("capital", "What is the capital of Canada?", "ottawa"),
    ("capital", "What is the capital of Egypt?", "cairo"),
    ("capital", "What is the capital of Peru?", "lima"),
    ("capital", "What is the capital of Norway?", "oslo"),
    ("capital", "What is the capital of Austria?", "vienna"),
    ("sound", "What sound does a dog make?", "bark"),
    ("sound", "What sound does a cat make?", "meow"),
    ("sound", "What sound does a cow make?", "moo"),
    ("sound", "What sound does a duck make?", "quack"),
    ("sound", "What sound does a sheep make?", "baa"),
    ("sound", "What sound does a lion make?", "roar"),
    ("sound", "What sound does an owl make?", "hoot"),
    ("sound", "What sound does a snake make?", "hiss"),
    ("colour", "What colour is the sky?", "blue"),
    ("colour", "What colour is grass?", "green"),
    ("colour", "What colour is snow?", "white"),
    ("colour", "What colour is coal?", "black"),
    ("colour", "What colour is a banana?", "yellow"),
    ("colour", "What colour is blood?", "red"),
    ("colour", "What colour is a carrot?", "orange"),
    ("colour", "What colour is lavender?", "purple"),
    ("opposite", "What is the opposite of hot?", "cold"),
    ("opposite", "What is the opposite of big?", "small"),
    ("opposite", "What is the opposite of up?", "down"),
    ("opposite", "What is the opposite of fast?", "slow"),
    ("opposite", "What is the opposite of day?", "night"),
    ("opposite", "What is the opposite of happy?", "sad"),
    ("opposite", "What is the opposite of old?", "young"),
    ("opposite", "What is the opposite of light?", "dark"),
    ("legs", "How many legs does a spider have?", "eight"),
    ("legs", "How many legs does a dog have?", "four"),
    ("legs", "How many legs does a bird have?", "two"),
    ("legs", "How many legs does an ant have?", "six"),
    ("legs", "How many legs does a snake have?", "zero"),
    ("legs", "How many legs does a horse have?", "four"),
)

# --------------------------------------------------------------------------- arrow schema

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
OPTIONS_TYPE = pa.struct([(letter, pa.string()) for letter in LETTERS])
MCQ_TYPE = pa.struct([("Question", pa.string()), ("Options", OPTIONS_TYPE), ("Correct_Answer", pa.string())])
CLASSIFICATION_TYPE = pa.struct(
    [("Image_Textual_Questions", pa.list_(MCQ_TYPE)), ("Pure_Text_Questions", pa.list_(MCQ_TYPE))]
)
OPEN_QUESTION_TYPE = pa.struct([("Question", pa.string()), ("Ground_Truth", pa.string()), ("Type", pa.string())])
GENERATION_TYPE = pa.list_(OPEN_QUESTION_TYPE)

PROFILE_SCHEMA = pa.schema(
    [
        ("image", IMAGE_TYPE),
        ("ID", pa.string()),
        ("biography", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("Classification_Task", CLASSIFICATION_TYPE),
        ("Generation_Task", GENERATION_TYPE),
        ("Mask_Task", GENERATION_TYPE),
    ]
)
TEST_SCHEMA = pa.schema(
    [
        ("ID", pa.string()),
        ("images", pa.list_(IMAGE_TYPE)),
        ("Classification_Task", CLASSIFICATION_TYPE),
        ("Generation_Task", GENERATION_TYPE),
        ("Mask_Task", GENERATION_TYPE),
    ]
)
FT_SCHEMA = pa.schema([("image", IMAGE_TYPE), ("ID", pa.string()), ("metadata", pa.string())])

#: every split folder the generator writes, in writing order.
SPLITS: tuple[str, ...] = (*EVAL_SPLITS, FT_SPLIT, *EXTRA_SPLITS, HOLDOUT_SPLIT)

# --------------------------------------------------------------------------- people


@dataclass(frozen=True)
class Person:
    """A fictitious person or celebrity: identity, profile and face."""

    id: str
    name: str
    profile: dict[str, str]
    features: FaceFeatures
    celebrity: bool

    def biography(self) -> str:
        """The profile as the JSON string stored in the ``biography`` column."""
        bio = {"Name": self.name, **self.profile, "Appearance": self.features.as_dict()}
        return json.dumps(bio, sort_keys=False)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent generator for one purpose: a function of (seed, stream ids) only."""
    return np.random.default_rng([seed, *stream])


# stream ids (never reuse one for a different purpose)
_S_NAMES, _S_PROFILES, _S_FACES, _S_FORGET, _S_MCQ, _S_TRAIN_VIEW, _S_TEST_VIEW, _S_PERC, _S_WORLD = range(9)


def _pick_faces(rng: np.random.Generator, n: int, min_distance: int = 2) -> list[FaceFeatures]:
    """``n`` faces, pairwise different in at least ``min_distance`` features (seeded greedy)."""
    combos = all_feature_combinations()
    codes = np.array([c.as_index() for c in combos], dtype=np.int8)
    chosen: list[int] = []
    for i in rng.permutation(len(combos)):
        if len(chosen) == n:
            break
        if chosen and int((codes[chosen] != codes[i]).sum(axis=1).min()) < min_distance:
            continue
        chosen.append(int(i))
    if len(chosen) < n:
        raise ValueError(
            f"cannot draw {n} faces that differ in >= {min_distance} features (got {len(chosen)}); "
            "use fewer people + celebrities"
        )
    return [combos[i] for i in chosen]


def build_people(
    people: int, celebrities: int, seed: int, holdout: int = 0
) -> tuple[list[Person], list[Person], list[Person]]:
    """The fictitious people, the celebrities and the holdout people of a benchmark (pure function
    of the args). Holdout people are drawn last, so adding them leaves the others unchanged."""
    total = people + celebrities + holdout
    if total > len(FIRST_NAMES):
        raise ValueError(f"at most {len(FIRST_NAMES)} people + celebrities + holdout people are supported, got {total}")
    name_rng = _rng(seed, _S_NAMES)
    firsts = [FIRST_NAMES[i] for i in name_rng.permutation(len(FIRST_NAMES))[:total]]
    names = [f"{first} {LAST_NAMES[name_rng.integers(len(LAST_NAMES))]}" for first in firsts]
    faces = _pick_faces(_rng(seed, _S_FACES), total)
    prof_rng = _rng(seed, _S_PROFILES)
    width = max(3, len(str(max(people, celebrities) - 1)))
    out: list[Person] = []
    for k in range(total):
        profile = {attr: str(values[prof_rng.integers(len(values))]) for attr, values in ATTRIBUTES.items()}
        celeb = people <= k < people + celebrities
        if k >= people + celebrities:
            pid = f"H{k - people - celebrities:0{width}d}"
        else:
            pid = f"C{k - people:0{width}d}" if celeb else f"P{k:0{width}d}"
        out.append(Person(pid, names[k], profile, faces[k], celeb))
    return out[:people], out[people : people + celebrities], out[people + celebrities :]


def forget_ids(people: Sequence[Person], seed: int) -> dict[int, list[str]]:
    """Forget IDs per forget ratio: nested prefixes of one seeded permutation, in Full_Set order."""
    perm = _rng(seed, _S_FORGET).permutation(len(people))
    out: dict[int, list[str]] = {}
    for ratio in FORGET_RATIOS:
        chosen = set(perm[: len(people) * ratio // 100].tolist())
        out[ratio] = [p.id for i, p in enumerate(people) if i in chosen]
    return out


# --------------------------------------------------------------------------- rows


def _png(image: Image.Image, path: str) -> dict[str, object]:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return {"bytes": buf.getvalue(), "path": path}


def _mcq(rng: np.random.Generator, question: str, answer: str, pool: Sequence[str]) -> dict[str, object]:
    """A 4-option MCQ: 3 distinct distractors from ``pool``, the answer at a uniform letter."""
    others = sorted(set(pool) - {answer})
    if len(others) < 3:
        raise ValueError(f"MCQ {question!r} needs >= 3 distractors in its pool, got {others}")
    distractors = [others[i] for i in rng.choice(len(others), size=3, replace=False)]
    pos = int(rng.integers(4))
    values = distractors[:pos] + [answer] + distractors[pos:]
    return {
        "Question": question,
        "Options": dict(zip(LETTERS, values, strict=True)),
        "Correct_Answer": LETTERS[pos],
    }


def _open(question: str, truth: str, image: bool) -> dict[str, str]:
    return {"Question": question, "Ground_Truth": truth, "Type": "Image_Textual" if image else "Pure_Text"}


def _person_tasks(person: Person, group: Sequence[Person], rng: np.random.Generator) -> dict[str, object]:
    """Classification, generation and mask tasks of one person (names drawn from ``group``)."""
    names = [p.name for p in group]
    image_mcq = [_mcq(rng, WHO_QUESTION, person.name, names)]
    text_mcq = []
    generation = [_open(WHO_QUESTION, person.name, True)]
    mask = []
    for attr, pool in ATTRIBUTES.items():
        value = person.profile[attr]
        image_mcq.append(_mcq(rng, vqa_question(attr), value, pool))
        text_mcq.append(_mcq(rng, qa_question(attr, person.name), value, pool))
    for attr in ATTRIBUTES:
        generation.append(_open(vqa_question(attr), person.profile[attr], True))
    for attr in ATTRIBUTES:
        generation.append(_open(qa_question(attr, person.name), person.profile[attr], False))
    for attr in ATTRIBUTES:
        mask.append(_open(vqa_cloze(attr), person.profile[attr], True))
    for attr in ATTRIBUTES:
        mask.append(_open(qa_cloze(attr, person.name), person.profile[attr], False))
    return {
        "Classification_Task": {"Image_Textual_Questions": image_mcq, "Pure_Text_Questions": text_mcq},
        "Generation_Task": generation,
        "Mask_Task": mask,
    }


def _person_vqa(person: Person) -> list[dict[str, str]]:
    return [{"Question": WHO_QUESTION, "Answer": person.name}] + [
        {"Question": vqa_question(a), "Answer": person.profile[a]} for a in ATTRIBUTES
    ]


def _person_qa(person: Person) -> list[dict[str, str]]:
    return [{"Question": qa_question(a, person.name), "Answer": person.profile[a]} for a in ATTRIBUTES]


@dataclass(frozen=True)
class _PerceptionItem:
    id: str
    image: Image.Image
    description: dict[str, object]
    qa: list[tuple[str, str, tuple[str, ...] | None]]  # question, answer, MCQ pool (None: no MCQ)


def _perception_items(
    seed: int, n: int, prefix: str, stream: int, faces: Sequence[FaceFeatures]
) -> list[_PerceptionItem]:
    """``n`` perception images: the first half shape scenes, the rest the given random ``faces``."""
    rng = _rng(seed, _S_PERC, stream)
    n_shapes = n - len(faces)
    items: list[_PerceptionItem] = []
    for k in range(n):
        pid = f"{prefix}_{k:04d}"
        if k < n_shapes:
            scene = ShapeScene(
                shape=SHAPES[rng.integers(len(SHAPES))],
                colour=tuple(SHAPE_COLOURS)[rng.integers(len(SHAPE_COLOURS))],
                count=int(rng.integers(1, len(COUNT_WORDS) + 1)),
                background=tuple(SHAPE_BACKGROUNDS)[rng.integers(len(SHAPE_BACKGROUNDS))],
                layout_seed=int(rng.integers(2**31 - 1)),
            )
            values = {
                "colour": scene.colour,
                "shape": scene.shape,
                "count": COUNT_WORDS[scene.count - 1],
                "background": scene.background,
            }
            qa = [(q, values[key], pool) for key, q, pool in SHAPE_QUESTIONS]
            items.append(_PerceptionItem(pid, render_shapes(scene), {"kind": "shapes", **values}, qa))
        else:
            face = faces[k - n_shapes]
            image = render_portrait(face, random_view(rng))
            qa = []
            for feature, q in FACE_QUESTIONS.items():
                if feature == "hair_style" and face.accessory == "hat":
                    continue  # the hat hides the hair style
                pool = FEATURE_VALUES[feature] if feature in FACE_MCQ_FEATURES else None
                qa.append((q, getattr(face, feature), pool))
            items.append(_PerceptionItem(pid, image, {"kind": "face", **face.as_dict()}, qa))
    return items


# --------------------------------------------------------------------------- writing


def _write(folder: Path, split: str, rows: list[dict[str, object]], schema: pa.Schema) -> int:
    (folder / split).mkdir(parents=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, folder / split / PARQUET_NAME, compression="snappy")
    return len(rows)


def _is_benchmark(folder: Path) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"benchmark target {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_benchmark(out):
        raise FileExistsError(
            f"refusing to overwrite {out}: it is not empty and holds no {MARKER} marker of a previous "
            "synthetic benchmark; choose another folder or empty it"
        )


def write_benchmark(
    out: Path,
    people: int = 100,
    celebrities: int = 20,
    seed: int = 0,
    train_views: int = 8,
    test_views: int = 2,
    *,
    perception_train: int = 200,
    perception_test: int = 60,
    holdout: int = 10,
) -> Path:
    """Generate the synthetic benchmark into ``out`` (MLLMU-Bench layout) and return ``out``.

    Written to a temporary sibling folder and moved into place at the end. An existing
    previous benchmark at ``out`` is replaced; any other non-empty folder is refused.
    ``perception_train``/``perception_test`` are the numbers of perception images in
    ``ft_Data`` and ``Perception_Set`` (half shape scenes, half random faces). ``holdout``
    people (IDs ``H...``) appear only in ``Holdout_Set``, in ``ft_Data``'s training format: a
    model fine-tuned on ``ft_Data`` never saw them, so they are membership inference's
    non-members.
    """
    out = Path(out)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if people < 20:
        raise ValueError(f"people must be >= 20 so that forget_5 holds at least one person, got {people}")
    if celebrities < 4:
        raise ValueError(f"celebrities must be >= 4 (the naming MCQ needs 3 distractors), got {celebrities}")
    if train_views < 1 or test_views < 1:
        raise ValueError(f"train_views and test_views must be >= 1, got {train_views} and {test_views}")
    if perception_train < 2 or perception_test < 2:
        raise ValueError(
            f"perception_train and perception_test must be >= 2, got {perception_train} and {perception_test}"
        )
    if holdout < 1:
        raise ValueError(f"holdout must be >= 1 (membership inference needs non-members), got {holdout}")
    _check_target(out)

    fictitious, celebs, held = build_people(people, celebrities, seed, holdout)
    forget = forget_ids(fictitious, seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        counts = _generate(
            tmp, fictitious, celebs, held, forget, seed, train_views, test_views, perception_train, perception_test
        )
        marker = {
            "generator": GENERATOR,
            "version": VERSION,
            "seed": seed,
            "people": people,
            "celebrities": celebrities,
            "holdout": holdout,
            "train_views": train_views,
            "test_views": test_views,
            "perception_train": perception_train,
            "perception_test": perception_test,
            "splits": list(SPLITS),
            "rows": counts,
            "forget_ids": {forget_split(r): ids for r, ids in forget.items()},
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.is_dir() and any(out.iterdir()):
        _check_target(out)  # still a benchmark? (it may have changed while we generated)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)


def _generate(
    tmp: Path,
    fictitious: list[Person],
    celebs: list[Person],
    held: list[Person],
    forget: dict[int, list[str]],
    seed: int,
    train_views: int,
    test_views: int,
    perception_train: int,
    perception_test: int,
) -> dict[str, int]:
    mcq_rng = _rng(seed, _S_MCQ, 0)
    canonical: dict[str, dict[str, object]] = {}

    def profile_row(person: Person, group: Sequence[Person]) -> dict[str, object]:
        image = _png(render_portrait(person.features, RenderView()), f"{person.id}.png")
        canonical[person.id] = image
        return {
            "image": image,
            "ID": person.id,
            "biography": person.biography(),
            "question": WHO_QUESTION,
            "answer": person.name,
            **_person_tasks(person, group, mcq_rng),
        }

    full_rows = [profile_row(p, fictitious) for p in fictitious]
    celeb_rows = [profile_row(p, celebs) for p in celebs]
    counts: dict[str, int] = {}
    counts["Full_Set"] = _write(tmp, "Full_Set", full_rows, PROFILE_SCHEMA)

    test_rows = []
    for k, (person, row) in enumerate(zip(fictitious, full_rows, strict=True)):
        rng = _rng(seed, _S_TEST_VIEW, k)
        images = [
            _png(render_portrait(person.features, random_view(rng)), f"{person.id}_test{v}.png")
            for v in range(test_views)
        ]
        test_rows.append({"ID": person.id, "images": images, **{c: row[c] for c in TEST_SCHEMA.names[2:]}})
    counts["Test_Set"] = _write(tmp, "Test_Set", test_rows, TEST_SCHEMA)
    counts["Retain_Set"] = _write(tmp, "Retain_Set", celeb_rows, PROFILE_SCHEMA)

    for ratio in FORGET_RATIOS:
        ids = set(forget[ratio])
        counts[forget_split(ratio)] = _write(
            tmp, forget_split(ratio), [r for r in full_rows if r["ID"] in ids], PROFILE_SCHEMA
        )
        counts[retain_split(ratio)] = _write(
            tmp, retain_split(ratio), [r for r in full_rows if r["ID"] not in ids], PROFILE_SCHEMA
        )

    # random faces for perception: never a benchmark person's exact face, distinct images.
    used = {p.features for p in (*fictitious, *celebs, *held)}
    free = [f for f in all_feature_combinations() if f not in used]
    n_train_faces, n_test_faces = perception_train // 2, perception_test // 2
    face_idx = _rng(seed, _S_PERC, 0).permutation(len(free))[: n_train_faces + n_test_faces]
    faces = [free[i] for i in face_idx]
    perc_train = _perception_items(seed, perception_train, "perctrain", 1, faces[:n_train_faces])
    perc_test = _perception_items(seed, perception_test, "perc", 2, faces[n_train_faces:])

    def training_rows(k: int, person: Person) -> list[dict[str, object]]:
        rng = _rng(seed, _S_TRAIN_VIEW, k)
        vqa = json.dumps(_person_vqa(person))
        first = canonical.get(person.id) or _png(render_portrait(person.features, RenderView()), f"{person.id}.png")
        rows = [{"image": first, "ID": person.id, "metadata": vqa}]
        for v in range(1, train_views):
            image = _png(render_portrait(person.features, random_view(rng)), f"{person.id}_train{v}.png")
            rows.append({"image": image, "ID": person.id, "metadata": vqa})
        rows.append({"image": None, "ID": person.id, "metadata": json.dumps(_person_qa(person))})
        return rows

    ft_rows: list[dict[str, object]] = []
    for k, person in enumerate((*fictitious, *celebs)):
        ft_rows += training_rows(k, person)
    for item in perc_train:
        pairs = [{"Question": q, "Answer": a} for q, a, _ in item.qa]
        ft_rows.append({"image": _png(item.image, f"{item.id}.png"), "ID": item.id, "metadata": json.dumps(pairs)})
    for k, (_, question, answer) in enumerate(WORLD_FACTS):
        pairs = [{"Question": question, "Answer": answer}]
        ft_rows.append({"image": None, "ID": f"world_{k:03d}", "metadata": json.dumps(pairs)})
    counts[FT_SPLIT] = _write(tmp, FT_SPLIT, ft_rows, FT_SCHEMA)
    first = len(fictitious) + len(celebs)
    held_rows = [row for j, person in enumerate(held) for row in training_rows(first + j, person)]
    counts[HOLDOUT_SPLIT] = _write(tmp, HOLDOUT_SPLIT, held_rows, FT_SCHEMA)

    perc_rows = []
    perc_mcq_rng = _rng(seed, _S_MCQ, 1)
    for item in perc_test:
        mcqs = [_mcq(perc_mcq_rng, q, a, pool) for q, a, pool in item.qa if pool is not None]
        perc_rows.append(
            {
                "image": _png(item.image, f"{item.id}.png"),
                "ID": item.id,
                "biography": json.dumps(item.description),
                "question": item.qa[0][0],
                "answer": item.qa[0][1],
                "Classification_Task": {"Image_Textual_Questions": mcqs, "Pure_Text_Questions": []},
                "Generation_Task": [_open(q, a, True) for q, a, _ in item.qa],
                "Mask_Task": [],
            }
        )
    counts["Perception_Set"] = _write(tmp, "Perception_Set", perc_rows, PROFILE_SCHEMA)

    world_rng = _rng(seed, _S_WORLD)
    world_rows = []
    for k, (category, question, answer) in enumerate(WORLD_FACTS):
        pool = sorted({a for c, _, a in WORLD_FACTS if c == category})
        world_rows.append(
            {
                "image": None,
                "ID": f"world_{k:03d}",
                "biography": json.dumps({"category": category}),
                "question": question,
                "answer": answer,
                "Classification_Task": {
                    "Image_Textual_Questions": [],
                    "Pure_Text_Questions": [_mcq(world_rng, question, answer, pool)],
                },
                "Generation_Task": [_open(question, answer, False)],
                "Mask_Task": [],
            }
        )
    counts["World_Set"] = _write(tmp, "World_Set", world_rows, PROFILE_SCHEMA)
    return {split: counts[split] for split in SPLITS}


def benchmark_digest(root: Path) -> str:
    """SHA-256 over every parquet file of a benchmark (relative path + bytes), for reproducibility."""
    h = hashlib.sha256()
    for path in sorted(Path(root).rglob("*.parquet")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()
