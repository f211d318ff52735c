"""Rows of one config of a Hugging Face dataset repo saved to a local folder (CLEAR, TOFU).

``huggingface-cli download <repo> --repo-type dataset --local-dir ROOT`` (or ``git clone``) keeps
the repo's own layout. The layouts seen in the wild, all accepted:

* ``ROOT/<config>/train-00000-of-00001.parquet`` (``push_to_hub`` layout, CLEAR);
* ``ROOT/<config>/<split>/0000.parquet`` (the ``refs/convert/parquet`` branch);
* ``ROOT/<config>.json`` holding JSON lines or one JSON array (TOFU), or ``ROOT/<config>.jsonl``;
* ``ROOT/<config>/*.json(l)`` and ``ROOT/<config>.parquet``.

Nothing is fetched: a missing config is a :class:`~forgetlab.data.mllmu.DataError` naming the
path that was looked for and the command that downloads the repo.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from forgetlab.data.mllmu import DataError

_TEXT_SUFFIXES = (".json", ".jsonl")


def _check_root(root: Path | str, repo: str) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise DataError(
            f"{repo} folder {path} does not exist. forgetlab never downloads data: fetch it on a machine "
            f"with network access with `huggingface-cli download {repo} --repo-type dataset --local-dir {path}`"
        )
    return path


def config_files(root: Path, config: str) -> list[Path]:
    """The data files of ``config`` under ``root`` (sorted), in the first layout that has any."""
    if not config or "/" in config or "\\" in config or config in (".", ".."):
        raise DataError(f"invalid config name {config!r}")
    folder = root / config
    if folder.is_dir():
        for pattern in ("*.parquet", "*/*.parquet", "*.jsonl", "*.json"):
            files = sorted(p for p in folder.glob(pattern) if p.is_file())
            if files:
                return files
    for suffix in (".parquet", ".jsonl", ".json"):
        path = root / f"{config}{suffix}"
        if path.is_file():
            return [path]
    return []


def available_configs(root: Path | str, repo: str) -> list[str]:
    """Config names with data under ``root`` (folders with data files, or ``<config>.json(l)/.parquet``)."""
    base = _check_root(root, repo)
    names = {p.name for p in base.iterdir() if p.is_dir() and config_files(base, p.name)}
    names |= {p.stem for p in base.iterdir() if p.is_file() and p.suffix in (*_TEXT_SUFFIXES, ".parquet")}
    return sorted(names)


def split_configs(benchmark: str, percent: int, allowed: Sequence[int]) -> tuple[str, str]:
    """``("forget05", "retain95")`` for 5: the forget/retain config names TOFU and CLEAR share."""
    if percent not in allowed:
        raise ValueError(f"{benchmark} forget percentage {percent!r} is not one of {list(allowed)}")
    return f"forget{percent:02d}", f"retain{100 - percent}"


def _json_rows(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} as UTF-8 JSON text: {exc}") from exc
    if not text:
        return []
    if text.startswith("["):
        try:
            rows = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{path}: malformed JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except (ValueError, RecursionError) as exc:
                    raise DataError(f"{path}, line {n}: malformed JSON line ({type(exc).__name__}: {exc})") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON array or JSON lines of objects")
    if not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path}: expected JSON objects (one per row)")
    return rows


def _parquet_rows(path: Path, columns: list[str]) -> list[dict[str, Any]]:
    try:
        table = pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read parquet file {path}: {exc}") from exc
    return table.to_pylist()


def _columns_of(path: Path) -> list[str] | None:
    """Column names of a parquet file (None for JSON files: checked per row)."""
    if path.suffix != ".parquet":
        return None
    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read parquet file {path}: {exc}") from exc


def read_config(
    root: Path | str,
    config: str,
    *,
    repo: str,
    required: Sequence[str],
    optional: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Rows of ``config`` with the ``required`` columns (and those of ``optional`` that exist).

    Raises :class:`DataError` naming the config, the column and the file for a missing column,
    and naming the looked-for paths for a missing config.
    """
    base = _check_root(root, repo)
    files = config_files(base, config)
    if not files:
        avail = available_configs(base, repo)
        raise DataError(
            f"{repo} config {config!r} not found: looked for {base / config}/*.parquet and "
            f"{base / config}.json(l); available configs: {', '.join(avail) or 'none'}. Download the dataset with "
            f"`huggingface-cli download {repo} --repo-type dataset --local-dir {base}`"
        )
    rows: list[dict[str, Any]] = []
    for path in files:
        names = _columns_of(path)
        if names is not None:
            missing = [c for c in required if c not in names]
            if missing:
                raise DataError(
                    f"{repo} config {config!r}: column {missing[0]!r} missing in {path} "
                    f"(columns present: {', '.join(names)})"
                )
            rows.extend(_parquet_rows(path, [*required, *(c for c in optional if c in names)]))
            continue
        for i, row in enumerate(_json_rows(path)):
            missing = [c for c in required if c not in row]
            if missing:
                raise DataError(
                    f"{repo} config {config!r}: column {missing[0]!r} missing in row {i} of {path} "
                    f"(keys present: {', '.join(row)})"
                )
            rows.append({c: row.get(c) for c in (*required, *optional) if c in row})
    if not rows:
        raise DataError(f"{repo} config {config!r} is empty ({len(files)} file(s), no rows)")
    return rows


def text_value(row: dict[str, Any], column: str, where: str) -> str:
    """A non-empty string cell, or a DataError naming ``where`` (config and row) and the column."""
    value = row.get(column)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: column {column!r} must be non-empty text, got {value!r:.60}")
    return value


def text_list(row: dict[str, Any], column: str, where: str) -> list[str]:
    """A list-of-strings cell (a JSON string holding a list is parsed), or a DataError."""
    value = row.get(column)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: column {column!r} must be a non-empty list of strings, got {value!r:.60}")
    return list(value)
