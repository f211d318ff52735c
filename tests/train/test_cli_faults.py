"""The commands under faults: a full disk while saving, and the original model folder never touched."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

from typer.testing import CliRunner

from forgetlab.cli import app

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def tree_digest(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file under ``folder`` (any write shows up)."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_disk_full_while_saving_the_unlearned_model(saved_model, tiny_bench, tmp_path, monkeypatch) -> None:
    import transformers.modeling_utils as mu

    def half_then_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mu, "safe_save_file", half_then_full)
    out = tmp_path / "runs" / "ga"
    result = invoke("unlearn", "--method", "ga", "--model", saved_model, "--data", tiny_bench, "--out", out,
                    "--max-steps", 1)  # fmt: skip
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error")]  # besides the progress bar
    assert len(errors) == 1 and errors[0].startswith(f"error: writing {out} failed: No space left on device (disk full")
    assert "Traceback" not in result.output
    assert list((tmp_path / "runs").iterdir()) == []  # no partial folder, no temporary, no lock file


def test_no_command_modifies_the_original_model_folder(saved_model, tiny_bench, tmp_path) -> None:
    """unlearn -> eval (original and unlearned) -> relearn -> probe, all reading the original folder."""
    before = tree_digest(saved_model)
    unlearned = tmp_path / "unlearned"
    steps = [
        ("unlearn", "--method", "ga", "--model", saved_model, "--data", tiny_bench, "--out", unlearned,
         "--max-steps", 2),
        ("eval", "--model", saved_model, "--data", tiny_bench, "--out", tmp_path / "eval", "--no-generation"),
        ("relearn", "--model", unlearned, "--original", saved_model, "--data", tiny_bench,
         "--out", tmp_path / "relearn", "--modality", "qa"),
        ("probe", "--reference", saved_model, "--model", unlearned, "--out", tmp_path / "probe",
         "--data", tiny_bench, "--per-group", 2, "--no-fisher"),
    ]  # fmt: skip
    for args in steps:
        result = invoke(*args)
        assert result.exit_code == 0, (args[0], result.output)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert tree_digest(saved_model) == before
    assert sorted(p.name for p in saved_model.parent.iterdir()) == [saved_model.name]  # nothing beside it either
