"""The demo's wall time, read from the ``metrics.json`` that ``make demo`` writes (nothing is run here).

Run: ``.venv/bin/python bench/bench_demo.py [--demo-metrics runs/demo/metrics.json]`` (``--rows-json PATH``:
the table rows for ``bench/run_all.py``; ``--quick`` and ``--threads`` are accepted and change nothing).
``metrics.json`` holds ``seconds`` (the whole invocation) and ``stage_seconds`` (each stage of that
invocation); where the run's ``manifest.json`` is beside it, each stage's time when it first finished is
used instead (their sum is the demo's compute time, even after a resumed or repeated invocation).
Without a manifest, a stage reused from an earlier run costs about nothing, so the figure is a cold
demo's time only when no stage took ~0 s; the row names the stages that did.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from _common import add_common_args, emit, parse, row

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "runs" / "demo" / "metrics.json"
CACHED_S = 1.0  # a stage this fast reused an earlier run's output


def measure(args: argparse.Namespace) -> dict:
    path = args.demo_metrics.resolve()
    shown = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    if not path.is_file():
        return {"path": shown, "present": False}
    metrics = json.loads(path.read_text())
    stages = metrics.get("stage_seconds") or {}
    manifest = path.with_name("manifest.json")
    if manifest.is_file():  # each stage's time when it first finished: a rerun's cached stages do not hide it
        first = {k: v.get("seconds") for k, v in json.loads(manifest.read_text()).get("stages", {}).items()}
        if first and all(v is not None for v in first.values()):
            stages = first
            metrics = metrics | {"seconds": round(sum(first.values()), 1)}
    written = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
    return {
        "path": shown,
        "present": True,
        "seconds": metrics.get("seconds"),
        "stage_seconds": stages,
        "cached": [k for k, v in stages.items() if v is not None and v < CACHED_S],
        "written": written.strftime("%Y-%m-%d %H:%M UTC"),
    }


def report(res: dict) -> None:
    if not res["present"]:
        print(f"{res['path']}: not found (run `make demo` first)")
        return
    print(f"{res['path']} (written {res['written']}): {res['seconds']} s")
    for k, v in res["stage_seconds"].items():
        print(f"  {k:<24}{v:10.1f} s")
    if res["cached"]:
        print("stages at ~0 s reused an earlier run: " + ", ".join(res["cached"]))


def to_rows(res: dict, args: argparse.Namespace) -> list[dict]:
    figure = "`forgetlab demo` wall time"
    if not res["present"]:
        return [row("demo", figure, "not run (make demo)", note=f"no {res['path']}; `make demo` writes it")]
    seconds = res["seconds"]
    stages = ", ".join(f"{k} {v:.1f} s" if v < 10 else f"{k} {v:.0f} s" for k, v in res["stage_seconds"].items())
    cached = f"; REUSED (~0 s, not a cold demo): {', '.join(res['cached'])}" if res["cached"] else ""
    if seconds is None:
        value = "unknown"
    else:
        value = f"{seconds:.1f} s" if seconds < 60 else f"{seconds:.0f} s ({seconds / 60:.1f} min)"
    return [row("demo", figure, value, note=f"{res['path']}, written {res['written']}: {stages}{cached}",
                seconds=seconds, stage_seconds=res["stage_seconds"], cached=res["cached"])]  # fmt: skip


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--demo-metrics", type=Path, default=DEFAULT, help="the demo's metrics.json (default runs/demo/metrics.json)"
    )
    add_common_args(ap, threads=None)
    return ap


def rows(quick: bool = True, threads: int | None = None, demo_metrics: Path = DEFAULT) -> list[dict]:
    """Table rows for ``bench/run_all.py``."""
    args = parse(parser(), {}, ["--demo-metrics", str(demo_metrics)])
    return to_rows(measure(args), args)


def main(argv: list[str] | None = None) -> None:
    args = parse(parser(), {}, argv)
    res = measure(args)
    report(res)
    emit(args, to_rows(res, args))


if __name__ == "__main__":
    main()
