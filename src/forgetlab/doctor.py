"""``forgetlab doctor``: what this machine offers, and what will not work on it.

:func:`diagnose` collects facts (versions, device, free disk and memory, offline mode, whether
output locks and atomic folder swaps work where outputs go) and warnings; nothing is downloaded,
nothing is written outside a temporary folder under ``--path``. The command prints both and
exits 0 (1 with ``--strict`` when there is a warning).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

#: packages whose versions are reported
PACKAGES: tuple[str, ...] = ("forgetlab", "torch", "transformers", "accelerate", "peft", "safetensors", "tokenizers")
#: below this much free disk, saving a real checkpoint may fail (a 7B model in bf16 is ~14 GB per copy)
MIN_FREE_DISK_GB = 20.0
#: below this much available memory, loading a real 7B model on the CPU side will not fit
MIN_FREE_MEMORY_GB = 16.0
#: browsers that can render the HTML report headless (screenshots)
BROWSERS: tuple[str, ...] = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
GB = 1024**3


@dataclass
class Diagnosis:
    """``facts``: label -> value, in display order; ``warnings``: what will not work."""

    facts: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _available_memory() -> tuple[float, float] | None:
    """(available, total) GiB from /proc/meminfo, or None where it does not exist."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        kib = {k: int(v.split()[0]) for k, v in info.items() if k in ("MemAvailable", "MemTotal")}
        return kib["MemAvailable"] * 1024 / GB, kib["MemTotal"] * 1024 / GB
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _device(d: Diagnosis) -> None:
    import torch

    cuda_build = torch.version.cuda
    d.facts["torch build"] = f"CUDA {cuda_build}" if cuda_build else "CPU only"
    if torch.cuda.is_available():
        props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        gpus = [f"cuda:{i} {p.name} ({p.total_memory / GB:.0f} GiB)" for i, p in enumerate(props)]
        d.facts["device"] = ", ".join(gpus)
        if torch.cuda.is_bf16_supported() is False:
            d.warnings.append("this GPU has no bf16: use dtype float16/float32 in run configs (bf16: true fails)")
    else:
        d.facts["device"] = "CPU"
        if cuda_build:
            d.warnings.append(
                f"torch is a CUDA {cuda_build} build but no GPU is visible (driver missing, CUDA_VISIBLE_DEVICES "
                "empty, or a CPU-only machine): everything runs on the CPU; the CPU build saves gigabytes"
            )
        if shutil.which("nvidia-smi") and not cuda_build:
            d.warnings.append("an NVIDIA GPU driver is present but torch is a CPU-only build: install a CUDA build")
        d.warnings.append("no GPU: real 7B checkpoints are impractical; the demo and tiny models run fine")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    d.facts["cpu threads"] = str(cpus)
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    d.facts["torch threads"] = f"{torch.get_num_threads()} (OMP_NUM_THREADS={omp})"


def _storage(d: Diagnosis, path: Path) -> None:
    from forgetlab.io import _exchange
    from forgetlab.lock import output_lock

    where = path if path.exists() else next((p for p in path.parents if p.exists()), Path.cwd())
    usage = shutil.disk_usage(where)
    free = usage.free / GB
    d.facts["free disk"] = f"{free:.1f} GiB of {usage.total / GB:.0f} GiB at {where}"
    if free < MIN_FREE_DISK_GB:
        d.warnings.append(
            f"only {free:.1f} GiB free at {where}: saving real checkpoints needs ~2 bytes per parameter per copy "
            f"(a 7B model ~14 GB); below {MIN_FREE_DISK_GB:.0f} GiB unlearning a real model may fail with a full disk"
        )
    mem = _available_memory()
    if mem is None:
        d.facts["memory"] = "unknown (no /proc/meminfo)"
    else:
        d.facts["memory"] = f"{mem[0]:.1f} GiB available of {mem[1]:.1f} GiB"
        if mem[0] < MIN_FREE_MEMORY_GB:
            d.warnings.append(
                f"only {mem[0]:.1f} GiB of memory available: loading a real 7B checkpoint (~14 GB in bf16) may fail"
            )
    if not os.access(where, os.W_OK):
        d.warnings.append(f"{where} is not writable: outputs cannot be written there")
        return
    try:
        with tempfile.TemporaryDirectory(prefix=".forgetlab-doctor-", dir=where) as tmp:
            with output_lock(Path(tmp) / "out", warn=lambda _: None):
                d.facts["output locks"] = "ok (flock)"
            (Path(tmp) / "a").mkdir()
            (Path(tmp) / "b").mkdir()
            swap = _exchange(Path(tmp) / "a", Path(tmp) / "b")
            d.facts["atomic folder swap"] = "renameat2 exchange" if swap else "two renames (no renameat2 here)"
    except OSError as exc:
        d.warnings.append(f"output locks do not work at {where} ({exc}): two runs could write the same folder")


def _environment(d: Diagnosis) -> None:
    offline = [k for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
               if os.environ.get(k, "").lower() in ("1", "true", "yes", "on")]  # fmt: skip
    d.facts["offline mode"] = (", ".join(offline) + " set") if offline else "off (forgetlab itself never downloads)"
    d.facts["HF cache"] = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    d.facts["browser (report screenshots)"] = browser or "none"
    if browser is None:
        d.warnings.append(
            "no chromium/chrome on PATH: headless screenshots of report.html (and a screenshot test) cannot run; "
            "the report itself opens in any browser"
        )


def diagnose(path: Path | str = ".") -> Diagnosis:
    """Facts and warnings about this machine; ``path``: where outputs will be written."""
    d = Diagnosis()
    d.facts["python"] = f"{platform.python_version()} ({sys.executable})"
    d.facts["platform"] = platform.platform()
    for package in PACKAGES:
        version = _version(package)
        d.facts[package] = version or "not installed"
        if version is None and package != "forgetlab":
            d.warnings.append(f"{package} is not installed: forgetlab needs it (pip install -e .)")
    _device(d)
    _storage(d, Path(path).absolute())
    _environment(d)
    return d


def doctor_command(
    path: Annotated[Path, typer.Option(help="folder where outputs will go (disk space, locks)")] = Path("."),
    strict: Annotated[bool, typer.Option(help="exit 1 when there is any warning")] = False,
) -> None:
    """Print the environment (versions, device, disk, memory, offline mode) and what will not work."""
    d = diagnose(path)
    width = max(len(k) for k in d.facts)
    for k, v in d.facts.items():
        typer.echo(f"{k:<{width}}  {v}")
    for w in d.warnings:
        typer.echo(f"warning: {w}")
    if not d.warnings:
        typer.echo("no problems found")
    if strict and d.warnings:
        raise typer.Exit(1)
