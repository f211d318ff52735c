"""CLEAR (Dontsov et al., arXiv 2410.18057, HF ``therem/CLEAR``) from a local copy of the dataset repo.

CLEAR has 200 fictitious authors (TOFU's) with ~3.7k face images. Configs (one folder each,
see :mod:`forgetlab.data.hf_local` for the accepted file layouts):

* ``forget01/05/10``, ``retain99/95/90``, ``full``: ``image, caption, name`` — one face per row;
* ``forgetXX+tofu``, ``retainXX+tofu``, ``full+tofu``: ``image, caption, question, answer`` — the image
  rows plus TOFU's text-only rows (``question``/``answer`` set, image and caption null);
* ``forgetXX_perturbed``, ``retain_perturbed``: ``image, caption, name, perturbed_names,
  perturbed_captions, paraphrased_caption``;
* ``real_faces``: ``image, answer, options`` (real celebrities, options = wrong names);
* ``real_world``: ``question, answer, image, options`` (generic VQA; ``options`` = wrong answers).

What this module builds, as :class:`~forgetlab.data.schema.Sample` lists:

* training samples: every image row becomes a caption VQA sample (question drawn, seeded per row,
  from the reference's caption questions), every text row a QA sample;
* the **name-recognition MCQ**: "What is the name of the person in the image?" with the true name
  and the ``perturbed_names`` as options, the true name inserted at a position drawn from
  ``(seed, row)`` (the reference inserts it at ``random.randint``); ``real_faces`` / ``real_world``
  MCQs are built the same way from ``answer`` + ``options``;
* **caption generation** items: the image, a caption question, the caption as ground truth
  (``meta["paraphrased"]`` holds the paraphrased caption when the config has one).

Person IDs are author names. Text rows of ``+tofu`` configs carry no name: TOFU stores 20
consecutive questions per author, so each block of 20 text rows gets the name of the image rows'
authors that its questions and answers mention most (else ``tofu_author_<block>``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from forgetlab.data.hf_local import available_configs, read_config, split_configs, text_list, text_value
from forgetlab.data.mllmu import DataError, _decode_image
from forgetlab.data.schema import Sample

REPO = "therem/CLEAR"
#: forget percentages of the published configs; retain = 100 - forget.
FORGET_PERCENTS: tuple[int, ...] = (1, 5, 10)
NAME_QUESTION = "What is the name of the person in the image?"
#: the caption questions of the reference code (one is drawn per row, seeded).
CAPTION_QUESTIONS: tuple[str, ...] = (
    "What can you see in this picture?",
    "Tell me about the content of this image",
    "Can you give a description of the image?",
    "What is depicted in the image?",
    "Explain what you observe in the picture.",
    "Describe the image in detail.",
    "What is the main subject of this image?",
    "Can you describe the scene or objects in the image?",
    "What is happening in this image?",
)
#: TOFU stores this many consecutive questions per author.
TOFU_QUESTIONS_PER_AUTHOR = 20


def forget_config(percent: int) -> str:
    """``forget05`` for 5."""
    return split_configs("CLEAR", percent, FORGET_PERCENTS)[0]


def retain_config(percent: int) -> str:
    """``retain95`` for a forget percentage of 5."""
    return split_configs("CLEAR", percent, FORGET_PERCENTS)[1]


def configs(root: Path | str) -> list[str]:
    """The CLEAR configs present under ``root``."""
    return available_configs(root, REPO)


#: independent random streams per purpose
_CAPTION_STREAM, _OPTION_STREAM = 0, 1


def _rng(seed: int, stream: int, config: str, row: int) -> np.random.Generator:
    """A generator that is a function of (seed, purpose, config, row) alone."""
    return np.random.default_rng([seed, stream, *config.encode(), row])


def _caption_question(seed: int, config: str, row: int) -> str:
    return CAPTION_QUESTIONS[int(_rng(seed, _CAPTION_STREAM, config, row).integers(len(CAPTION_QUESTIONS)))]


def _row_options(row: dict[str, Any], answer: str, column: str, seed: int, config: str, i: int) -> tuple[dict, str]:
    """:func:`mcq_options` of one row, with errors naming the config, row and column."""
    where = _where(config, i)
    try:
        return mcq_options(answer, text_list(row, column, where), _rng(seed, _OPTION_STREAM, config, i))
    except ValueError as exc:
        raise DataError(f"{where}: column {column!r}: {exc}") from None


def _where(config: str, row: int) -> str:
    return f"CLEAR config {config!r}, row {row}"


def _image(value: Any, config: str, row: int, pid: str):
    image = _decode_image(value, config, pid, "image")
    if image is None:
        raise DataError(f"{_where(config, row)} (name {pid!r}): image is missing")
    return image


def mcq_options(answer: str, wrong: Sequence[str], rng: np.random.Generator) -> tuple[dict[str, str], str]:
    """``({letter: text}, correct letter)``: ``wrong`` (deduplicated, the answer removed) with the answer
    inserted at a position drawn from ``rng`` — the reference's ``options.insert(randint(0, n), answer)``."""
    distractors = list(dict.fromkeys(w for w in wrong if w.strip().lower() != answer.strip().lower()))
    if not distractors:
        raise ValueError(f"no wrong option differs from the answer {answer!r}")
    position = int(rng.integers(0, len(distractors) + 1))
    texts = [*distractors[:position], answer, *distractors[position:]]
    letters = [chr(ord("A") + i) for i in range(len(texts))]
    return dict(zip(letters, texts, strict=True)), letters[position]


# --------------------------------------------------------------------------- training rows


def _caption_names(root: Path | str, config: str) -> dict[str, str]:
    """caption -> name from the config without ``+tofu`` (``+tofu`` configs have no name column)."""
    base = config.removesuffix("+tofu")
    if base == config or base not in configs(root):
        return {}
    rows = read_config(root, base, repo=REPO, required=["caption", "name"])
    return {r["caption"]: r["name"] for r in rows if isinstance(r.get("caption"), str) and r.get("name")}


def _author_of_block(texts: list[str], names: Sequence[str]) -> str | None:
    counts = Counter(n for n in names for t in texts if n and n.lower() in t.lower())
    return counts.most_common(1)[0][0] if counts else None


def load_training(root: Path | str, config: str, *, seed: int = 0) -> list[Sample]:
    """Training samples (task ``"train"``) of a ``forgetXX``/``retainXX``/``full`` config, with or without ``+tofu``.

    Image rows become caption VQA samples, text rows QA samples (see the module doc for IDs).
    """
    rows = read_config(root, config, repo=REPO, required=["image"], optional=["caption", "name", "question", "answer"])
    by_caption = {} if rows and "name" in rows[0] else _caption_names(root, config)
    samples: list[Sample] = []
    text_rows: list[tuple[int, dict[str, Any]]] = []
    for i, row in enumerate(rows):
        question = row.get("question")
        if isinstance(question, str) and question.strip():
            text_rows.append((i, row))
            continue
        where = _where(config, i)
        caption = text_value(row, "caption", where)
        pid = row.get("name") or by_caption.get(caption) or f"{config}#{i}"
        q = _caption_question(seed, config, i)
        image = _image(row["image"], config, i, pid)
        samples.append(Sample(q, caption, "vqa", "train", pid, config, image=image, meta={"row": str(i)}))
    names = list(dict.fromkeys(s.person_id for s in samples))
    for b in range(0, len(text_rows), TOFU_QUESTIONS_PER_AUTHOR):
        block = text_rows[b : b + TOFU_QUESTIONS_PER_AUTHOR]
        pairs = [
            (text_value(r, "question", _where(config, i)), text_value(r, "answer", _where(config, i)), i)
            for i, r in block
        ]
        author = _author_of_block([q + " " + a for q, a, _ in pairs], names)
        pid = author or f"tofu_author_{b // TOFU_QUESTIONS_PER_AUTHOR}"
        samples += [Sample(q, a, "qa", "train", pid, config, meta={"row": str(i)}) for q, a, i in pairs]
    return samples


# --------------------------------------------------------------------------- evaluation items


def name_mcqs(root: Path | str, config: str, *, seed: int = 0) -> list[Sample]:
    """The name-recognition MCQ of a ``forgetXX_perturbed`` / ``retain_perturbed`` config (one per image)."""
    rows = read_config(root, config, repo=REPO, required=["image", "name", "perturbed_names"])
    out: list[Sample] = []
    for i, row in enumerate(rows):
        where = _where(config, i)
        name = text_value(row, "name", where)
        options, correct = _row_options(row, name, "perturbed_names", seed, config, i)
        image = _image(row["image"], config, i, name)
        meta = {"kind": "name_recognition", "row": str(i)}
        out.append(Sample(NAME_QUESTION, name, "vqa", "classification", name, config, image, options, correct, meta))
    return out


def caption_items(root: Path | str, config: str, *, seed: int = 0) -> list[Sample]:
    """Caption-generation items (task ``"generation"``) of a config with ``image`` and ``caption``."""
    rows = read_config(root, config, repo=REPO, required=["image", "caption"], optional=["name", "paraphrased_caption"])
    out: list[Sample] = []
    for i, row in enumerate(rows):
        where = _where(config, i)
        caption = text_value(row, "caption", where)
        pid = row.get("name") or f"{config}#{i}"
        q = _caption_question(seed, config, i)
        meta = {"kind": "caption", "row": str(i)}
        if isinstance(row.get("paraphrased_caption"), str):
            meta["paraphrased"] = row["paraphrased_caption"]
        image = _image(row["image"], config, i, pid)
        out.append(Sample(q, caption, "vqa", "generation", pid, config, image, meta=meta))
    return out


def perturbed_caption_items(root: Path | str, config: str, *, seed: int = 0) -> list[Sample]:
    """The faces of a ``*_perturbed`` config with their first perturbed caption: text never trained on
    (the non-members of CLEAR's membership inference)."""
    rows = read_config(root, config, repo=REPO, required=["image", "perturbed_captions"], optional=["name"])
    out: list[Sample] = []
    for i, row in enumerate(rows):
        where = _where(config, i)
        captions = text_list(row, "perturbed_captions", where)
        if not captions:
            continue
        pid = row.get("name") or f"{config}#{i}"
        meta = {"kind": "perturbed_caption", "row": str(i)}
        image = _image(row["image"], config, i, pid)
        out.append(Sample(_caption_question(seed, config, i), captions[0], "vqa", "generation", pid, config, image,
                          meta=meta))  # fmt: skip
    return out


def real_mcqs(root: Path | str, config: str, *, seed: int = 0) -> list[Sample]:
    """MCQs of ``real_faces`` (question: the name question) or ``real_world`` (its own question)."""
    rows = read_config(root, config, repo=REPO, required=["image", "answer", "options"], optional=["question"])
    out: list[Sample] = []
    for i, row in enumerate(rows):
        where = _where(config, i)
        answer = text_value(row, "answer", where)
        question = row.get("question") if isinstance(row.get("question"), str) else NAME_QUESTION
        options, correct = _row_options(row, answer, "options", seed, config, i)
        pid = f"{config}#{i}"
        meta = {"kind": config, "row": str(i)}
        out.append(
            Sample(question, answer, "vqa", "classification", pid, config, _image(row["image"], config, i, pid),
                   options, correct, meta)
        )  # fmt: skip
    return out


def text_qa_items(root: Path | str, config: str) -> list[Sample]:
    """The text rows of a ``+tofu`` config as generation items (QA, scored by ROUGE)."""
    return [
        Sample(s.question, s.answer, "qa", "generation", s.person_id, config, meta=s.meta)
        for s in load_training(root, config)
        if s.modality == "qa"
    ]


def eval_sets(root: Path | str, percent: int, *, seed: int = 0, generation: bool = True) -> dict[str, list[Sample]]:
    """Evaluation sets in :func:`forgetlab.eval.runner.evaluate`'s naming.

    ``forget``: name MCQ (+ caption generation, + the ``forgetXX+tofu`` text QA when present) of
    ``forgetXX_perturbed``; ``retain``: the same for ``retain_perturbed`` (+ ``retainXX+tofu``);
    ``realfaces`` / ``realworld``: the ``real_faces`` / ``real_world`` MCQs when present.
    """
    present = set(configs(root))
    out: dict[str, list[Sample]] = {}
    parts = {"forget": (f"{forget_config(percent)}_perturbed", f"{forget_config(percent)}+tofu"),
             "retain": ("retain_perturbed", f"{retain_config(percent)}+tofu")}  # fmt: skip
    for name, (perturbed, tofu) in parts.items():
        items = name_mcqs(root, perturbed, seed=seed)
        if generation:
            items += caption_items(root, perturbed, seed=seed)
            if tofu in present:
                items += text_qa_items(root, tofu)
        out[name] = items
    for name, config in (("realfaces", "real_faces"), ("realworld", "real_world")):
        if config in present:
            out[name] = real_mcqs(root, config, seed=seed)
    return out
