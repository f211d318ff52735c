"""What every ``bench/bench_*.py`` script shares: table rows, the ``--quick`` / ``--rows-json`` / ``--threads``
options that ``bench/run_all.py`` passes, and an atomic JSON write.

A row is ``{"benchmark", "figure", "value", "goal", "ok", "note"}`` (``value`` and ``goal`` are short display
strings, ``ok`` is True/False against the goal or None where there is no goal) plus ``"raw"``: the numbers
behind it, for ``runs/bench/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def row(
    benchmark: str,
    figure: str,
    value: str,
    goal: str = "",
    ok: bool | None = None,
    note: str = "",
    **raw: Any,
) -> dict[str, Any]:
    """One table row; ``raw`` holds the numbers behind ``value`` (JSON-serialisable)."""
    return {"benchmark": benchmark, "figure": figure, "value": value, "goal": goal, "ok": ok, "note": note, "raw": raw}


def add_common_args(ap: argparse.ArgumentParser, threads: int | None = 1) -> None:
    """``--quick`` (the small sizes ``run_all`` uses), ``--rows-json PATH`` and ``--threads``."""
    ap.add_argument("--quick", action="store_true", help="small sizes (what `make bench` runs)")
    ap.add_argument("--rows-json", type=Path, default=None, help="also write the table rows to this JSON file")
    help_threads = "torch threads" + ("" if threads is not None else " (default: torch's own)")
    ap.add_argument("--threads", type=int, default=threads, help=help_threads)


def parse(ap: argparse.ArgumentParser, quick_defaults: dict[str, Any], argv: Sequence[str] | None = None):
    """Parse ``argv``; with ``--quick`` the options in ``quick_defaults`` default to their quick values
    (an option given explicitly still wins)."""
    first, _ = ap.parse_known_args(argv)
    if first.quick:
        ap.set_defaults(**quick_defaults)
    return ap.parse_args(argv)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary sibling file, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=1, default=str)
            fh.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a results file is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def emit(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` where ``--rows-json`` asks for them."""
    if args.rows_json is not None:
        write_json(args.rows_json, rows)


def times(x: float) -> str:
    """A ratio for the table: ``1.009×`` near a goal of about 1, ``7.14×``, ``23.5×``."""
    return f"{x:.3f}×" if x < 2 else f"{x:.2f}×" if x < 10 else f"{x:.1f}×"


def quiet_hf() -> None:
    """No progress bars or advisory warnings from transformers / huggingface_hub in the logs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def start(parser: Callable[[], argparse.ArgumentParser], quick_defaults: dict[str, Any], argv: Sequence[str] | None):
    """Parse a script's options, set its torch thread count and quiet transformers: every script's first step."""
    import torch

    args = parse(parser(), quick_defaults, argv)
    torch.set_num_threads(args.threads)
    quiet_hf()
    return args


def table_rows(
    parser: Callable[[], argparse.ArgumentParser],
    quick_defaults: dict[str, Any],
    measure: Callable[[argparse.Namespace], Any],
    to_rows: Callable[[Any, argparse.Namespace], list[dict]],
    quick: bool,
    threads: int,
) -> list[dict]:
    """A script's ``rows(quick, threads)`` for ``bench/run_all.py``: measure at those settings, return the rows."""
    args = start(parser, quick_defaults, ["--threads", str(threads)] + (["--quick"] if quick else []))
    return to_rows(measure(args), args)


def run_main(
    parser: Callable[[], argparse.ArgumentParser],
    quick_defaults: dict[str, Any],
    measure: Callable[[argparse.Namespace], Any],
    report: Callable[[Any, argparse.Namespace], None],
    to_rows: Callable[[Any, argparse.Namespace], list[dict]],
    argv: Sequence[str] | None = None,
) -> None:
    """A script's ``main``: measure, print its own report, and write the table rows when asked."""
    args = start(parser, quick_defaults, argv)
    res = measure(args)
    report(res, args)
    emit(args, to_rows(res, args))
