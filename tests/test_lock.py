"""Output-folder locks: a second run is refused naming the first; a killed run's lock is taken over;
an output folder that overlaps an input folder is refused."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forgetlab.cli import app
from forgetlab.lock import OutputLocked, check_not_input, lock_path, output_lock, read_lock
from forgetlab.study import DEMO_STUDY

#: a process that takes the lock of argv[1] and keeps it (the context manager must stay referenced)
HOLD = "import sys, time; from forgetlab.lock import output_lock; lock = output_lock(sys.argv[1]); lock.__enter__(); " \
       "print('locked', flush=True); time.sleep(120)"  # fmt: skip


@pytest.fixture
def holder(tmp_path):
    """A live process holding the lock of ``tmp_path / "out"``; killed at the end."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield out, proc
    proc.kill()
    proc.wait()


def test_second_run_is_refused_naming_the_first(holder) -> None:
    out, proc = holder
    with pytest.raises(OutputLocked) as err, output_lock(out):
        pass
    message = str(err.value)
    assert f"pid {proc.pid}" in message and socket.gethostname() in message and "started 20" in message
    assert read_lock(lock_path(out)).pid == proc.pid  # the holder's lock is left alone


@pytest.mark.parametrize(
    "args",
    [
        ["unlearn", "--method", "ga", "--model", "m", "--data", "d"],
        ["demo", "--people", "100"],
        ["run", str(DEMO_STUDY)],
        ["eval", "--model", "m", "--data", "d"],
        ["finetune", "--data", "d"],
    ],
    ids=["unlearn", "demo", "run", "eval", "finetune"],
)
def test_commands_refuse_a_locked_output_folder(holder, args) -> None:
    out, proc = holder
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert f"in use by pid {proc.pid}" in text and "Traceback" not in text
    assert not out.exists()  # nothing was written


def test_run_study_holds_the_lock(holder) -> None:
    from forgetlab.study.config import StudyConfig
    from forgetlab.study.pipeline import run_study

    out, proc = holder
    with pytest.raises(OutputLocked, match=f"pid {proc.pid}"):
        run_study(StudyConfig.model_validate({"name": "locked"}), out)  # refused before anything is prepared
    assert not out.exists()


def test_lock_of_a_killed_run_is_taken_over(tmp_path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_lock(lock_path(out)).pid == proc.pid  # the file stays behind
    told: list[str] = []
    with output_lock(out, warn=told.append) as me:
        assert me.pid == os.getpid() and read_lock(lock_path(out)).pid == os.getpid()
    assert len(told) == 1 and "stale" in told[0] and f"pid {proc.pid}" in told[0] and "no longer running" in told[0]
    assert not lock_path(out).exists()  # released


def test_stale_lock_file_without_holder_is_taken_over(tmp_path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    path = lock_path(tmp_path / "out")
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "yesterday", "command": "x"}))
    told: list[str] = []
    with output_lock(tmp_path / "out", warn=told.append):
        pass
    assert told and f"pid {pid}" in told[0]


def test_lock_is_released_on_error_and_can_be_taken_again(tmp_path) -> None:
    with pytest.raises(RuntimeError), output_lock(tmp_path / "out"):
        raise RuntimeError("crash")
    assert not lock_path(tmp_path / "out").exists()
    with output_lock(tmp_path / "out"):
        assert lock_path(tmp_path / "out").exists()


def test_output_overlapping_an_input_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for out in (model, model / "unlearned", tmp_path):
        with pytest.raises(ValueError, match="overlaps the model folder"):
            check_not_input(out, {"model": model})
    check_not_input(tmp_path / "unlearned", {"model": model, "data": None})  # a sibling is fine
    result = CliRunner().invoke(app, ["unlearn", "--method", "ga", "--model", str(model), "--data", "d",
                                      "--out", str(model)])  # fmt: skip
    assert result.exit_code == 2 and "overlaps the model folder" in result.output
