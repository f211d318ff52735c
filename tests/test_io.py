"""Atomic writes: the old content survives a failure; NaN never reaches JSON."""

from __future__ import annotations

import json

import pytest

from forgetlab.io import atomic_dir, atomic_file, write_json


def test_atomic_file_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write("half-written")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind


def test_atomic_dir_replaces_whole_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "a.txt").write_text("v1")
    with pytest.raises(ValueError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v2-partial")
        raise ValueError("crash during save")
    assert (target / "a.txt").read_text() == "v1"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_write_json_turns_nan_into_null(tmp_path):
    write_json(tmp_path / "m.json", {"acc": float("nan"), "n": 0, "nested": [float("inf"), 0.5]})
    data = json.loads((tmp_path / "m.json").read_text())
    assert data == {"acc": None, "n": 0, "nested": [None, 0.5]}
