"""The demo's wall time, read from the ``metrics.json`` that ``make demo`` writes (nothing is run here).

Run: ``.venv/bin/python bench/bench_demo.py [--demo-metrics runs/demo/metrics.json]`` (``--rows-json PATH``:
the table rows for ``bench/run_all.py``; ``--quick`` and ``--threads`` are accepted and change nothing).
``forgetlab demo`` runs the packaged study (``forgetlab.study.DEMO_STUDY``) through the study pipeline.
``metrics.json`` holds ``seconds`` (the whole invocation) and ``stage_seconds`` (each stage of that
invocation); where the run's ``manifest.json`` is beside it, each stage's time when it first finished is
used instead (their sum is the demo's compute time, even after a resumed or repeated invocation).
Without a manifest, a stage reused from an earlier run costs about nothing, so the figure is a cold
demo's time only when no stage took ~0 s; the row names the stages that did.

Where the time goes: ``metrics.json`` ``job_seconds`` holds each job's start and end. The jobs are summed by
kind (worker-seconds); their sum over the worker count is the least the job phase can take on those workers
whatever the order, so it says how much of the demo's time is its content rather than its scheduling.

The manifest also tells whether the run *is* the packaged demo: the study sections its recorded
configuration changes (``--people``, ``--set``, ``--log-with``... or ``forgetlab run`` of another study)
are named in the row, as is where its original model came from (``shipped``: copied; ``trained``:
knowledge injection included in the time, e.g. ``--retrain-original``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from _common import add_common_args, emit, parse, row

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "runs" / "demo" / "metrics.json"
CACHED_S = 1.0  # a stage this fast reused an earlier run's output ...
INSTANT = frozenset({"metrics"})  # ... except one that takes ~0 s in every run (writing metrics.json)


def packaged_demo() -> dict:
    """The configuration a run of the packaged demo study records in its manifest."""
    from forgetlab.study import DEMO_STUDY, read_study
    from forgetlab.study.pipeline import describe

    return json.loads(json.dumps(describe(read_study(DEMO_STUDY))))


def differences(config: dict | None, packaged: dict) -> list[str] | None:
    """The study sections where a run's recorded configuration departs from the packaged demo (None: unknown)."""
    if config is None:
        return None
    return sorted(k for k in packaged.keys() | config.keys() if config.get(k) != packaged.get(k))


#: the jobs a study names by a single word (every other job is "<kind> <target>", except the regimes, named by run)
SINGLE_WORD_JOBS = frozenset({"original", "gold", "baseline"})


def job_kind(name: str) -> str:
    """A job's kind: ``grid``, ``seeds``, ``regime``, ``verify run``, ``verify regime``, ``mia``, ``original``...

    A regime's job is its run name (one word); a grid run's name holds ``@`` and its learning rate."""
    kind, _, target = name.partition(" ")
    if not target:
        return kind if kind in SINGLE_WORD_JOBS else "regime"
    if kind == "verify":
        return "verify run" if "@" in target else "verify regime"
    return kind


def workers_used(spans: dict[str, list[float]]) -> int:
    """The most jobs that ran at once (the run's worker count)."""
    events = sorted([(a, 1) for a, _ in spans.values()] + [(b, -1) for _, b in spans.values()],
                    key=lambda e: (e[0], e[1]))  # an end before a start at the same instant  # fmt: skip
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return max(most, 1)


def job_budget(spans: dict[str, list[float]]) -> dict | None:
    """Worker-seconds per job kind, the job phase's length and the least it can take on the same workers."""
    if not spans:
        return None
    by_kind: dict[str, list[float]] = {}
    for name, (a, b) in spans.items():
        by_kind.setdefault(job_kind(name), []).append(b - a)
    workers = workers_used(spans)
    busy = sum(b - a for a, b in spans.values())
    phase = max(b for _, b in spans.values()) - min(a for a, _ in spans.values())
    kinds = {k: {"jobs": len(v), "seconds": round(sum(v), 1), "mean": round(sum(v) / len(v), 1)}
             for k, v in sorted(by_kind.items(), key=lambda kv: -sum(kv[1]))}  # fmt: skip
    return {"workers": workers, "worker_seconds": round(busy, 1), "phase": round(phase, 1),
            "least": round(busy / workers, 1), "busy": round(busy / (workers * phase), 3), "kinds": kinds}  # fmt: skip


def measure(args: argparse.Namespace) -> dict:
    path = args.demo_metrics.resolve()
    shown = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    if not path.is_file():
        return {"path": shown, "present": False}
    metrics = json.loads(path.read_text())
    stages = metrics.get("stage_seconds") or {}
    manifest = path.with_name("manifest.json")
    recorded = json.loads(manifest.read_text()) if manifest.is_file() else {}
    first = {k: v.get("seconds") for k, v in recorded.get("stages", {}).items()}
    if first and all(v is not None for v in first.values()):
        # each stage's time when it first finished: a rerun's cached stages do not hide it
        stages = first
        metrics = metrics | {"seconds": round(sum(first.values()), 1)}
    written = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
    return {
        "path": shown,
        "present": True,
        "study": metrics.get("study"),
        "seconds": metrics.get("seconds"),
        "stage_seconds": stages,
        "cached": [k for k, v in stages.items() if v is not None and v < CACHED_S and k not in INSTANT
                   and recorded.get("stages", {}).get(k, {}).get(k) != "shipped"],  # a shipped model is a copy
        "original": recorded.get("stages", {}).get("original", {}).get("original"),
        "differs": differences(recorded.get("config"), packaged_demo()),
        "written": written.strftime("%Y-%m-%d %H:%M UTC"),
        "jobs": job_budget(metrics.get("job_seconds") or {}),
    }


def provenance(res: dict) -> str:
    """Whether the run is the packaged demo, and where its original model came from."""
    if res["differs"] is None:
        what = "not checked against the packaged demo study (no manifest.json beside it)"
    elif res["differs"]:
        what = f"NOT the packaged demo study: {res['study']!r} differs in {', '.join(res['differs'])}"
    else:
        what = "the packaged demo study"
    return what + (f"; original model {res['original']}" if res["original"] else "")


def report(res: dict) -> None:
    if not res["present"]:
        print(f"{res['path']}: not found (run `make demo` first)")
        return
    print(f"{res['path']} (written {res['written']}): {res['seconds']} s")
    print(provenance(res))
    for k, v in res["stage_seconds"].items():
        print(f"  {k:<24}{v:10.1f} s")
    if res["cached"]:
        print("stages at ~0 s reused an earlier run: " + ", ".join(res["cached"]))
    jobs = res.get("jobs")
    if jobs:
        print(f"jobs: {jobs['worker_seconds']:.0f} worker-s on {jobs['workers']} workers in a {jobs['phase']:.0f} s "
              f"phase ({jobs['busy']:.0%} busy; at least {jobs['least']:.0f} s in any order)")
        for k, v in jobs["kinds"].items():
            print(f"  {k:<16}{v['jobs']:4d} jobs {v['seconds']:8.1f} worker-s  ({v['mean']:.1f} s each)")


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
    note = f"{res['path']}, written {res['written']}, {provenance(res)}: {stages}{cached}"
    jobs = res.get("jobs")
    if jobs:
        kinds = ", ".join(f"{k} {v['jobs']}x{v['mean']:.0f} s" for k, v in jobs["kinds"].items())
        note += (f"; jobs {jobs['worker_seconds']:.0f} worker-s on {jobs['workers']} workers ({kinds}), "
                 f"{jobs['busy']:.0%} busy, at least {jobs['least']:.0f} s in any order")  # fmt: skip
    return [row("demo", figure, value, note=note, seconds=seconds, stage_seconds=res["stage_seconds"],
                cached=res["cached"], original=res["original"], differs=res["differs"], jobs=jobs)]  # fmt: skip


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
