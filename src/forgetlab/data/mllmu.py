"""The one loader for MLLMU-Bench-format folders: the real download and our synthetic benchmark.

A benchmark root holds one folder per split (``Full_Set``, ``Test_Set``, ``forget_10``,
``ft_Data``, ...), each with one or more ``*.parquet`` files. This module turns their rows
into :class:`~forgetlab.data.schema.Sample` objects and rejects malformed input with a
:class:`DataError` naming the split, the column, the file and the row ID.

Tolerated variations of the real download: several parquet files per split (read in
sorted order); ``Classification_Task`` / ``Generation_Task`` / ``Mask_Task`` /
``metadata`` / ``biography`` stored as nested structs or as JSON strings; ``Options`` as a
struct, a dict, a JSON string or a list; non-string ``ID`` values (turned into strings);
training rows with ``question``/``answer`` columns instead of ``metadata``.

Untrusted input: images are decoded from their embedded bytes only (the ``path`` field of an
image struct is never opened), with a pixel limit checked from the header before decoding. An
evaluation split holds one row per ID: an exact duplicate row is skipped and reported with a
:class:`DataWarning`, a conflicting one is an error; ``forget_N`` and ``retain_{100-N}`` must
share no ID.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from forgetlab.data.schema import FT_SPLIT, HOLDOUT_SPLIT, Modality, Sample, Task

#: refuse images with more pixels than this (decompression bombs, wrong files).
MAX_IMAGE_PIXELS = 4096 * 4096
#: task name -> column holding it.
TASK_COLUMNS: dict[str, str] = {
    "classification": "Classification_Task",
    "generation": "Generation_Task",
    "mask": "Mask_Task",
}
#: folder of the real MLLMU ``baseline_train_split`` layout inside a root.
TRAIN_SPLIT_DIR = "train_split"

_MCQ_LISTS: dict[str, Modality] = {"Image_Textual_Questions": "vqa", "Pure_Text_Questions": "qa"}


class DataError(ValueError):
    """Malformed or missing benchmark data; the message names split, column, file and row ID."""


class DataWarning(UserWarning):
    """Rows a loader skipped (counted and named in the message)."""


# --------------------------------------------------------------------------- folders


def _root(root: Path | str) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"benchmark root {path} does not exist or is not a folder")
    return path


def _parquet_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.parquet") if p.is_file())


def available_splits(root: Path | str) -> list[str]:
    """Names of the split folders under ``root`` that hold at least one parquet file (sorted)."""
    base = _root(root)
    return sorted(p.name for p in base.iterdir() if p.is_dir() and _parquet_files(p))


def _columns(path: Path, split: str) -> list[str]:
    """Column names of a parquet file, or a DataError naming the split and file."""
    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"split {split!r}: cannot read parquet file {path}: {exc}") from exc


def _split_files(base: Path, split: str) -> list[Path]:
    """The parquet files of one split folder, or a DataError listing the available splits."""
    if not split or "/" in split or "\\" in split or split in (".", ".."):
        raise DataError(f"invalid split name {split!r}")
    folder = base / split
    if not folder.is_dir():
        avail = available_splits(base)
        raise DataError(f"split {split!r} not found under {base}; available splits: {', '.join(avail) or 'none'}")
    files = _parquet_files(folder)
    if not files:
        raise DataError(f"split {split!r} ({folder}) holds no *.parquet file")
    return files


def _read(files: Sequence[Path], split: str, required: Sequence[str]) -> dict[str, list[Any]]:
    """Read the named columns of every file of a split into python lists (concatenated)."""
    data: dict[str, list[Any]] = {}
    for path in files:
        names = _columns(path, split)
        missing = [c for c in required if c not in names]
        if missing:
            raise DataError(
                f"split {split!r}: column {missing[0]!r} missing in {path} (columns present: {', '.join(names)})"
            )
        try:
            table = pq.read_table(path, columns=list(required))
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"split {split!r}: cannot read parquet file {path}: {exc}") from exc
        for column in required:
            data.setdefault(column, []).extend(table.column(column).to_pylist())
    if not data.get("ID"):
        raise DataError(f"split {split!r} is empty ({len(files)} parquet file(s), no rows)")
    return data


def _ids(values: list[Any], split: str) -> list[str]:
    out = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and not v.strip()):
            raise DataError(f"split {split!r}: column 'ID' is empty in row {i}")
        out.append(str(v))
    return out


def split_ids(root: Path | str, split: str) -> list[str]:
    """The distinct person/item IDs of a split, in order of first appearance."""
    base = _root(root)
    data = _read(_split_files(base, split), split, ["ID"])
    return list(dict.fromkeys(_ids(data["ID"], split)))


_PAIRED = re.compile(r"(forget|retain)_(\d+)")


def check_disjoint(base: Path, split: str) -> None:
    """``forget_N`` and ``retain_{100-N}`` under ``base`` share no ID (a DataError naming them otherwise)."""
    m = _PAIRED.fullmatch(split)
    if m is None:
        return
    partner = f"{'retain' if m.group(1) == 'forget' else 'forget'}_{100 - int(m.group(2))}"
    if not (base / split).is_dir() or not (base / partner).is_dir() or not _parquet_files(base / partner):
        return
    try:
        theirs = set(split_ids(base, partner))
    except DataError:
        return  # a broken partner is reported when it is loaded itself
    both = set(split_ids(base, split)) & theirs
    if both:
        raise DataError(
            f"splits {split!r} and {partner!r} under {base} share {len(both)} ID(s), e.g. {sorted(both)[:5]}: "
            "a person cannot be both forgotten and retained"
        )


def _unique_rows(data: dict[str, list[Any]], row_ids: list[str], split: str) -> list[int]:
    """Row indices with each ID once: exact duplicates skipped (DataWarning), conflicting ones a DataError."""
    first: dict[str, int] = {}
    keep: list[int] = []
    skipped: list[str] = []
    for i, pid in enumerate(row_ids):
        j = first.setdefault(pid, i)
        if j == i:
            keep.append(i)
        elif all(values[i] == values[j] for values in data.values()):
            skipped.append(pid)
        else:
            raise DataError(
                f"split {split!r}: ID {pid!r} appears in rows {j} and {i} with different content; "
                "an evaluation split holds one row per ID"
            )
    if skipped:
        warnings.warn(
            DataWarning(f"split {split!r}: {len(skipped)} exact duplicate row(s) skipped, IDs {skipped[:5]}"),
            stacklevel=3,
        )
    return keep


# --------------------------------------------------------------------------- values


def _at(split: str, column: str, pid: str) -> str:
    """Where a value lives, for error messages."""
    return f"split {split!r}, column {column!r}, ID {pid!r}"


def _decode_image(value: Any, split: str, pid: str, column: str) -> Image.Image | None:
    """Decode an ``{bytes, path}`` struct (or raw bytes) to an RGB image; None stays None."""
    if value is None:
        return None
    raw = value.get("bytes") if isinstance(value, dict) else value
    if raw is None:
        raise DataError(f"{_at(split, column, pid)}: image has no embedded bytes")
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise DataError(f"{_at(split, column, pid)}: image bytes have type {type(raw).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(raw))) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DataError(
                        f"{_at(split, column, pid)}: image of {w}x{h} pixels exceeds "
                        f"the limit of {MAX_IMAGE_PIXELS} pixels"
                    )
                im.load()
                return im.convert("RGB")
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{_at(split, column, pid)}: image exceeds the pixel limit ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{_at(split, column, pid)}: cannot decode image bytes ({exc})") from exc


def _maybe_json(value: Any, split: str, column: str, pid: str) -> Any:
    """Values stored as JSON strings are parsed; nested values are returned as they are."""
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise DataError(f"{_at(split, column, pid)}: malformed JSON ({exc})") from exc
        except RecursionError:
            raise DataError(f"{_at(split, column, pid)}: JSON nested too deeply") from None
    return value


def _text(value: Any, what: str, split: str, column: str, pid: str) -> str:
    if value is None:
        raise DataError(f"{_at(split, column, pid)}: {what} is missing")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"{_at(split, column, pid)}: {what} must be text, got {type(value).__name__}")
    return value


def _options(value: Any, split: str, column: str, pid: str) -> dict[str, str]:
    value = _maybe_json(value, split, column, pid)
    if isinstance(value, list):
        value = {chr(ord("A") + i): v for i, v in enumerate(value)}
    if not isinstance(value, dict):
        raise DataError(f"{_at(split, column, pid)}: Options must be a mapping, got {value!r}")
    options = {str(k).strip(): _text(v, f"option {k}", split, column, pid) for k, v in value.items() if v is not None}
    if len(options) < 2:
        raise DataError(f"{_at(split, column, pid)}: MCQ has fewer than 2 options: {options}")
    return options


def _correct_letter(value: Any, options: dict[str, str], split: str, column: str, pid: str) -> str:
    raw = _text(value, "Correct_Answer", split, column, pid).strip()
    if raw in options:
        return raw
    m = re.fullmatch(r"\(?([A-Za-z])\)?[.:)]?(\s.*)?", raw)
    if m and m.group(1).upper() in options:
        return m.group(1).upper()
    for letter, text in options.items():  # some exports store the option text itself
        if text.strip().lower() == raw.lower():
            return letter
    raise DataError(f"{_at(split, column, pid)}: Correct_Answer {raw!r} is not among the options {sorted(options)}")


def _modality_of_type(value: Any, split: str, column: str, pid: str) -> Modality:
    kind = re.sub(r"[^a-z]", "", _text(value, "Type", split, column, pid).lower())
    if kind == "imagetextual":
        return "vqa"
    if kind == "puretext":
        return "qa"
    raise DataError(f"{_at(split, column, pid)}: Type {value!r} is not 'Image_Textual' or 'Pure_Text'")


def _as_list(value: Any, split: str, column: str, pid: str) -> list[Any]:
    value = _maybe_json(value, split, column, pid)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(f"{_at(split, column, pid)}: expected a list, got {type(value).__name__}")
    return value


def _as_dict(item: Any, split: str, column: str, pid: str) -> dict[str, Any]:
    item = _maybe_json(item, split, column, pid)
    if not isinstance(item, dict):
        raise DataError(f"{_at(split, column, pid)}: expected an object, got {item!r}")
    return item


# --------------------------------------------------------------------------- evaluation splits


def load_split(
    root: Path | str,
    split: str,
    *,
    ids: Iterable[str] | None = None,
    tasks: Sequence[str] = ("classification", "generation", "mask"),
) -> list[Sample]:
    """Samples of one evaluation split, for the requested ``tasks``.

    Classification MCQs become samples with ``options``/``correct`` (Image_Textual ->
    ``"vqa"`` with the row's image, Pure_Text -> ``"qa"``); generation and cloze items
    become samples whose modality follows their ``Type``. In a split with an ``images``
    list (``Test_Set``) every image-text question yields one sample per image
    (``meta["view"]``), every text-only question one sample. ``ids`` restricts the rows to
    those IDs; an ID absent from the split is an error.
    """
    if isinstance(tasks, str):
        tasks = (tasks,)
    if isinstance(ids, str):
        ids = (ids,)
    unknown = [t for t in tasks if t not in TASK_COLUMNS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; valid tasks: {', '.join(TASK_COLUMNS)}")
    base = _root(root)
    files = _split_files(base, split)
    check_disjoint(base, split)
    names = _columns(files[0], split)
    image_column = "images" if "images" in names else "image"
    columns = ["ID", image_column, *(TASK_COLUMNS[t] for t in dict.fromkeys(tasks))]
    data = _read(files, split, columns)
    row_ids = _ids(data["ID"], split)

    keep = _unique_rows(data, row_ids, split)
    if ids is not None:
        wanted = [str(i) for i in ids]
        present = set(row_ids)
        missing = [i for i in wanted if i not in present]
        if missing:
            raise DataError(f"split {split!r}: {len(missing)} requested ID(s) not in the split: {missing[:10]}")
        wanted_set = set(wanted)
        keep = [i for i in keep if row_ids[i] in wanted_set]

    samples: list[Sample] = []
    for i in keep:
        pid = row_ids[i]
        images = _row_images(data[image_column][i], image_column, split, pid)
        for task in tasks:
            column = TASK_COLUMNS[task]
            value = data[column][i]
            if task == "classification":
                samples.extend(_classification(value, images, split, column, pid))
            else:
                samples.extend(_open_ended(value, task, images, split, column, pid))
    return samples


def load_text_questions(root: Path | str, split: str) -> list[Sample]:
    """The text-only (``Pure_Text_Questions``) classification MCQs of an evaluation split.

    The same samples as ``load_split(root, split, tasks=("classification",))`` keeps with modality
    ``"qa"``, but the image column is never read (a ``Full_Set`` holds a photo per person).
    """
    base = _root(root)
    files = _split_files(base, split)
    column = TASK_COLUMNS["classification"]
    data = _read(files, split, ["ID", column])
    row_ids = _ids(data["ID"], split)
    samples: list[Sample] = []
    for i in _unique_rows(data, row_ids, split):
        samples.extend(_classification(data[column][i], [], split, column, row_ids[i], kinds=("Pure_Text_Questions",)))
    return samples


def _row_images(value: Any, column: str, split: str, pid: str) -> list[Image.Image]:
    if column == "images":
        images = [_decode_image(v, split, pid, column) for v in _as_list(value, split, column, pid)]
        return [im for im in images if im is not None]
    image = _decode_image(value, split, pid, column)
    return [] if image is None else [image]


def _views(
    modality: Modality, images: list[Image.Image], meta: dict[str, str], split: str, column: str, pid: str
) -> list[tuple[Image.Image | None, dict[str, str]]]:
    """(image, meta) per sample of one question: one per image for VQA, one without image for QA."""
    if modality == "qa":
        return [(None, meta)]
    if not images:
        raise DataError(f"{_at(split, column, pid)}: image-text question but the row has no image")
    return [(im, {**meta, "view": str(v)}) for v, im in enumerate(images)]


def _classification(
    value: Any, images: list[Image.Image], split: str, column: str, pid: str, kinds: Sequence[str] = tuple(_MCQ_LISTS)
) -> list[Sample]:
    task = _as_dict(value if value is not None else {}, split, column, pid)
    out: list[Sample] = []
    for key, modality in _MCQ_LISTS.items():
        if key not in kinds:
            continue
        items = _as_list(task.get(key), split, column, pid)
        for q_index, raw in enumerate(items):
            item = _as_dict(raw, split, column, pid)
            question = _text(item.get("Question"), "Question", split, column, pid)
            options = _options(item.get("Options"), split, column, pid)
            correct = _correct_letter(item.get("Correct_Answer"), options, split, column, pid)
            meta = {"qtype": key.removesuffix("_Questions"), "index": str(q_index)}
            for image, m in _views(modality, images, meta, split, column, pid):
                out.append(
                    Sample(
                        question=question,
                        answer=options[correct],
                        modality=modality,
                        task="classification",
                        person_id=pid,
                        split=split,
                        image=image,
                        options=dict(options),
                        correct=correct,
                        meta=m,
                    )
                )
    return out


def _open_ended(value: Any, task: str, images: list[Image.Image], split: str, column: str, pid: str) -> list[Sample]:
    out: list[Sample] = []
    for q_index, raw in enumerate(_as_list(value, split, column, pid)):
        item = _as_dict(raw, split, column, pid)
        question = _text(item.get("Question"), "Question", split, column, pid)
        truth = _text(item.get("Ground_Truth"), "Ground_Truth", split, column, pid)
        modality = _modality_of_type(item.get("Type"), split, column, pid)
        meta = {"qtype": "Image_Textual" if modality == "vqa" else "Pure_Text", "index": str(q_index)}
        for image, m in _views(modality, images, meta, split, column, pid):
            out.append(Sample(question, truth, modality, cast(Task, task), pid, split, image=image, meta=m))
    return out


def load_biographies(root: Path | str, split: str) -> dict[str, dict[str, Any]]:
    """``ID -> biography`` of a profile split (stored as a JSON string or as a struct)."""
    base = _root(root)
    data = _read(_split_files(base, split), split, ["ID", "biography"])
    out: dict[str, dict[str, Any]] = {}
    for pid, value in zip(_ids(data["ID"], split), data["biography"], strict=True):
        out[pid] = _as_dict(value, split, "biography", pid)
    return out


# --------------------------------------------------------------------------- training rows


def load_training(root: Path | str, split: str) -> list[Sample]:
    """Fine-tuning samples (task ``"train"``) of a split, one per ``{Question, Answer}`` pair.

    ``"ft_Data"`` and ``"Holdout_Set"`` (the embedded benchmark's never-trained people) read
    that folder. Any other split name (``"forget_10"``, ``"retain_90"``,
    ``"Retain_Set"``, ...) reads ``root/train_split/<split>/`` when it exists (the real
    MLLMU ``baseline_train_split`` layout) and otherwise keeps the ``ft_Data`` rows whose
    ID belongs to that split. Rows with an image give ``"vqa"`` samples, rows with a null
    image ``"qa"`` samples.
    """
    base = _root(root)
    if split in (FT_SPLIT, HOLDOUT_SPLIT):
        return _training_rows(base, split, split, None)
    check_disjoint(base, split)
    if (base / TRAIN_SPLIT_DIR / split).is_dir():
        check_disjoint(base / TRAIN_SPLIT_DIR, split)
        return _training_rows(base / TRAIN_SPLIT_DIR, split, split, None)
    wanted = set(split_ids(base, split))
    samples = _training_rows(base, FT_SPLIT, split, wanted)
    if not samples:
        raise DataError(f"split {split!r}: none of its {len(wanted)} IDs has a row in {FT_SPLIT!r}")
    return samples


def _training_rows(base: Path, folder: str, split: str, wanted: set[str] | None) -> list[Sample]:
    files = _split_files(base, folder)
    names = _columns(files[0], folder)
    if "metadata" in names or not {"question", "answer"} <= set(names):
        data = _read(files, folder, ["ID", "image", "metadata"])
    else:  # newer exports: one question/answer pair per row
        data = _read(files, folder, ["ID", "image", "question", "answer"])
    samples: list[Sample] = []
    for i, pid in enumerate(_ids(data["ID"], folder)):
        if wanted is not None and pid not in wanted:
            continue
        image = _decode_image(data["image"][i], folder, pid, "image")
        if "metadata" in data:
            pairs = _metadata(data["metadata"][i], folder, pid)
        else:
            pairs = [
                (
                    _text(data["question"][i], "question", folder, "question", pid),
                    _text(data["answer"][i], "answer", folder, "answer", pid),
                )
            ]
        for k, (question, answer) in enumerate(pairs):
            samples.append(
                Sample(
                    question=question,
                    answer=answer,
                    modality="vqa" if image is not None else "qa",
                    task="train",
                    person_id=pid,
                    split=split,
                    image=image,
                    meta={"row": str(i), "index": str(k)},
                )
            )
    return samples


def _metadata(value: Any, split: str, pid: str) -> list[tuple[str, str]]:
    column = "metadata"
    value = _maybe_json(value, split, column, pid)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{_at(split, column, pid)}: expected a non-empty list of {{Question, Answer}} pairs, got {value!r:.80}"
        )
    pairs = []
    for item in value:
        item = _as_dict(item, split, column, pid)
        if "Question" not in item or "Answer" not in item:
            raise DataError(f"{_at(split, column, pid)}: pair without Question/Answer keys: {item!r:.80}")
        pairs.append(
            (
                _text(item["Question"], "Question", split, column, pid),
                _text(item["Answer"], "Answer", split, column, pid),
            )
        )
    return pairs
