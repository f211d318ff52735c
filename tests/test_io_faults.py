"""Faults while writing: SIGKILL during a model save, a full disk, a killed writer's leftovers.

The model tests use a real tiny LLaVA saved with ``save_pretrained`` inside :func:`atomic_dir`,
exactly as every forgetlab command saves a model.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from forgetlab.io import WriteFailed, atomic_dir, write_json, write_jsonl
from forgetlab.masks import Mask
from forgetlab.models.load import load
from forgetlab.report.html import Report

#: loads the model at argv[1], then saves version k = 1, 2, ... (every parameter = k) over it in a loop;
#: mode "mid-write" stalls inside the weights write of version 2, after writing part of the file.
SAVER = r"""
import os, sys, time, torch
import transformers.modeling_utils as mu
from forgetlab.io import atomic_dir, write_json
from forgetlab.models.load import load
path, mode = sys.argv[1], sys.argv[2]
model, processor = load(path)
real, k = mu.safe_save_file, 0
def save_file(tensors, filename, metadata=None):
    if mode == "mid-write" and k == 2:
        with open(filename, "wb") as f:
            f.write(b"\0" * 65536); f.flush(); os.fsync(f.fileno())
        print("stalled", flush=True); time.sleep(120)
    return real(tensors, filename, metadata=metadata)
mu.safe_save_file = save_file
while True:
    k += 1
    with torch.no_grad():
        for p in model.parameters(): p.fill_(float(k))
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        write_json(tmp / "version.json", {"k": k})
    print(f"saved {k}", flush=True)
"""


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple:
    from forgetlab.models.tiny import build_tiny_model

    return build_tiny_model("llava", ["who is the person in the image", "alice", "bob"], image_size=16)


def save_v0(tiny, path: Path) -> None:
    model, processor = tiny
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        write_json(tmp / "version.json", {"k": 0})


def version(path: Path) -> int:
    """The version in a model folder, checking that every tensor belongs to it (no mixed files)."""
    k = json.loads((path / "version.json").read_text())["k"]
    tensors = load_file(str(path / "model.safetensors"))
    if k > 0:
        weights = [t for t in tensors.values() if t.is_floating_point()]
        assert all(bool((t == k).all()) for t in weights), "weights of mixed versions"
    return k


@pytest.mark.parametrize("moment", ["mid-write", "random"])
def test_sigkill_during_a_model_save_leaves_a_complete_loadable_model(tiny, tmp_path, moment) -> None:
    path = tmp_path / "model"
    save_v0(tiny, path)
    before = digest(path)
    child = subprocess.Popen([sys.executable, "-c", SAVER, str(path), moment], stdout=subprocess.PIPE, text=True)
    try:
        lines = [child.stdout.readline().strip()]
        if moment == "mid-write":
            lines.append(child.stdout.readline().strip())
            assert lines == ["saved 1", "stalled"]
            saved_1 = digest(path)
        else:
            assert lines == ["saved 1"]
            time.sleep(random.Random(0).uniform(0.05, 0.4))
    finally:
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read().split()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    if moment == "mid-write":  # killed inside the weights write of version 2: version 1 is there, byte for byte
        assert digest(path) == saved_1 and version(path) == 1 and saved_1 != before
    else:  # killed anywhere: the folder holds the last announced version or the one after it, never a mix
        last = max([1, *(int(x) for x in rest if x.isdigit())])
        assert version(path) in (last, last + 1)
    load(path)  # loadable by forgetlab
    # the killed writer's temporary folder is removed by the next save of the same folder
    save_v0(tiny, path)
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and digest(path) == before


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_during_a_model_save_is_one_clear_error_and_leaves_the_previous_model(
    tiny, tmp_path, monkeypatch
) -> None:
    import transformers.modeling_utils as mu

    path = tmp_path / "model"
    save_v0(tiny, path)
    before = digest(path)

    def half_then_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)  # part of the weights reached the disk
        enospc()

    monkeypatch.setattr(mu, "safe_save_file", half_then_full)
    with pytest.raises(WriteFailed, match=r"writing .*model failed: No space left on device \(disk full") as err:
        save_v0(tiny, path)
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    assert digest(path) == before and [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.parametrize("writer", ["json", "jsonl", "report", "mask"])
def test_disk_full_while_writing_a_file_leaves_no_partial_file(tmp_path, monkeypatch, writer) -> None:
    import forgetlab.io as io_mod

    target = tmp_path / f"out.{writer}"
    target.write_text("previous")
    write = {
        "json": lambda: write_json(target, {"acc": 0.5}),
        "jsonl": lambda: write_jsonl(target, [{"a": 1}] * 1000),
        "report": lambda: Report("t", "s").write(target),
        "mask": lambda: Mask({"w": torch.ones(4, dtype=torch.bool)}).save(target),
    }[writer]
    monkeypatch.setattr(io_mod.os, "fsync", enospc)  # the data was written; flushing it to disk fails
    with pytest.raises(WriteFailed, match=f"writing {target} failed: No space left on device"):
        write()
    assert target.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_version_caught_between_two_renames_is_put_back(tmp_path, monkeypatch) -> None:
    """Where renameat2 is missing, a writer killed between its two renames leaves the folder under
    ``.<name>.old-<host>-<pid>``; the next write of that folder restores it first."""
    import forgetlab.io as io_mod

    path = tmp_path / "model"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    old = tmp_path / f".model.old-{io_mod._tag().rsplit('-', 1)[0]}-{int(dead.stdout)}"
    old.mkdir()
    (old / "weights").write_text("v1")
    monkeypatch.setattr(io_mod, "_exchange", lambda a, b: False)
    with pytest.raises(RuntimeError), atomic_dir(path) as tmp:
        (tmp / "weights").write_text("v2-partial")
        raise RuntimeError("crash")
    assert (path / "weights").read_text() == "v1" and not old.exists()
    with atomic_dir(path) as tmp:
        (tmp / "weights").write_text("v2")
    assert (path / "weights").read_text() == "v2" and [p.name for p in tmp_path.iterdir()] == ["model"]
