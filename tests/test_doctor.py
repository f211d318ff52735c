"""``forgetlab doctor``: the environment, and warnings about what will not work."""

from __future__ import annotations

import platform
import shutil
from collections import namedtuple

import torch
import transformers
from typer.testing import CliRunner

from forgetlab import doctor
from forgetlab.cli import app


def test_doctor_prints_versions_device_disk_memory_and_offline_mode(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["doctor", "--path", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    out = result.output
    for label, value in [("python", platform.python_version()), ("torch", torch.__version__),
                         ("transformers", transformers.__version__), ("offline mode", "HF_HUB_OFFLINE"),
                         ("free disk", "GiB of"), ("memory", "GiB available"), ("output locks", "ok")]:  # fmt: skip
        assert any(line.startswith(label) and value in line for line in out.splitlines()), (label, out)
    assert any(line.startswith(("accelerate", "peft", "device")) for line in out.splitlines())
    assert list(tmp_path.iterdir()) == []  # its lock and swap checks leave nothing behind


def test_doctor_warns_about_what_will_not_work(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(100 * doctor.GB, 99 * doctor.GB, 1 * doctor.GB))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    d = doctor.diagnose(tmp_path)
    text = "\n".join(d.warnings)
    assert "CUDA 12.4 build but no GPU is visible" in text
    assert "only 1.0 GiB free" in text and "no chromium" in text
    assert d.facts["device"] == "CPU" and d.facts["offline mode"].startswith("off")
    result = CliRunner().invoke(app, ["doctor", "--path", str(tmp_path), "--strict"])
    assert result.exit_code == 1 and "warning: only 1.0 GiB free" in result.output
