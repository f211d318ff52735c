"""Run every ``bench/bench_*.py`` and print one table (what ``make bench`` runs).

Run: ``.venv/bin/python bench/run_all.py [--full] [--threads 1] [--only flops eval ...] [--demo-metrics PATH]
[--strict]``. Each script runs in its own process (its own thread setting, peak-memory counters and
imports), with ``--quick`` unless ``--full`` is given and ``--rows-json`` so that it hands back its
table rows; its own printout goes to ``runs/bench/logs/<script>.log``. Then one ``rich`` table of
all rows is printed, and ``runs/bench/results.json`` (rows, the numbers behind them, the machine,
per-script wall time) and ``runs/bench/results.md`` (the same table in Markdown, for
``docs/BENCHMARKS.md``) are written atomically.

The machine's 1-minute load average is sampled every few seconds while the benches run and
recorded with the results: on a shared machine it says how much else was running (each bench adds
about 1 itself). Exit status: 1 if a script failed (its row says where its log is); with
``--strict``, also if a figure misses its goal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import row, write_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: the order of the table; any other bench/bench_*.py follows, alphabetically
ORDER = ("flops", "unlearn", "optimizer_memory", "eval", "cka", "probe", "demo")


def scripts(only: list[str] | None) -> list[Path]:
    found = {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    if only:
        unknown = [n for n in only if n not in found]
        if unknown:
            raise SystemExit(f"unknown bench {unknown}; have {names}")
        names = [n for n in names if n in only]
    return [found[n] for n in names]


def machine(threads: int) -> dict:
    """CPU model, cores, memory, torch and its BLAS, thread count, date."""
    info: dict = {"cpu": platform.processor() or platform.machine()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info["cpu"] = fields.get("Model name", info["cpu"])
        for key in ("Hypervisor vendor", "L2 cache", "L3 cache"):
            if key in fields:
                info[key.lower().replace(" ", "_")] = fields[key]
        flags = fields.get("Flags", "").split()
        info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    except (OSError, subprocess.CalledProcessError):
        pass
    info["cores"] = os.cpu_count()
    info["cores_available"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        info["memory_gib"] = round(kib / 2**20, 1)
    except (OSError, AttributeError):
        pass
    import torch

    info["torch"] = torch.__version__
    blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    info["torch_blas"] = blas.group(1) if blas else None
    info["python"] = platform.python_version()
    info["threads"] = threads
    info["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return info


class LoadSampler(threading.Thread):
    """The 1-minute load average every ``every`` seconds, until stopped."""

    def __init__(self, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.every, self.samples, self._stop_event = every, [os.getloadavg()[0]], threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict:
        self._stop_event.set()
        self.join()
        s = self.samples + [os.getloadavg()[0]]
        stats = {"start": s[0], "end": s[-1], "mean": sum(s) / len(s), "max": max(s)}
        return {k: round(v, 2) for k, v in stats.items()}


def run_one(script: Path, args: argparse.Namespace, logs: Path, tmp: Path) -> tuple[list[dict], dict]:
    name = script.stem
    rows_file, log = tmp / f"{name}.json", logs / f"{name}.log"
    cmd = [sys.executable, str(script), "--rows-json", str(rows_file), "--threads", str(args.threads)]
    if not args.full:
        cmd.append("--quick")
    if name == "bench_demo" and args.demo_metrics is not None:
        cmd += ["--demo-metrics", str(args.demo_metrics)]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}
    print(f"{name:<26}", end="", flush=True)
    t0 = time.perf_counter()
    with log.open("w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    rel = log.relative_to(ROOT) if log.is_relative_to(ROOT) else log
    if rc == 0 and rows_file.is_file():
        rows = json.loads(rows_file.read_text())
        print(f"{seconds:7.1f} s  {len(rows)} row(s)", flush=True)
    else:
        tail = [ln for ln in log.read_text().splitlines() if ln.strip()][-1:] or [""]
        rows = [row(name.removeprefix("bench_"), "script failed", f"exit {rc}", ok=False,
                    note=f"see {rel}: {tail[0][:160]}")]  # fmt: skip
        print(f"{seconds:7.1f} s  FAILED (exit {rc}), see {rel}", flush=True)
    return rows, {"seconds": round(seconds, 1), "rc": rc, "log": str(rel)}


def ok_mark(ok: bool | None) -> str:
    return "" if ok is None else ("yes" if ok else "NO")


def print_table(rows: list[dict], info: dict, mode: str, width: int | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=width or (None if sys.stdout.isatty() else 200))
    title = (f"forgetlab bench ({mode}): {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
             f"{info['threads']} thread(s), {info['date']}")  # fmt: skip
    table = Table(title=title, show_lines=False, title_justify="left")
    table.add_column("benchmark", style="bold", no_wrap=True)
    table.add_column("figure")
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("goal", no_wrap=True)
    table.add_column("ok", no_wrap=True)
    table.add_column("note", style="dim")
    for i, r in enumerate(rows):
        first = i == 0 or rows[i - 1]["benchmark"] != r["benchmark"]
        last = i == len(rows) - 1 or rows[i + 1]["benchmark"] != r["benchmark"]
        mark = ok_mark(r["ok"])
        mark = f"[green]{mark}[/]" if r["ok"] else f"[bold red]{mark}[/]" if r["ok"] is False else mark
        table.add_row(r["benchmark"] if first else "", r["figure"], r["value"], r["goal"], mark, r["note"],
                      end_section=last)  # fmt: skip
    console.print(table)


def markdown(rows: list[dict], info: dict, mode: str, load: dict, wall: float) -> str:
    def cell(s: object) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    simd = ", ".join(info.get("simd", []))
    lines = [
        f"Machine: {info['cpu']} ({info.get('hypervisor_vendor', 'bare metal?')} VM)" if "hypervisor_vendor" in info
        else f"Machine: {info['cpu']}",
        f"{info['cores']} cores ({simd}), {info.get('memory_gib', '?')} GiB; torch {info['torch']} "
        f"({info.get('torch_blas')}), Python {info['python']}; {info['threads']} torch thread(s); {info['date']}; "
        f"`run_all.py` {mode}, {wall:.0f} s in all; 1-min load average during the run: mean {load['mean']}, "
        f"max {load['max']} (each bench adds about 1).",
        "",
        "| benchmark | figure | value | goal | ok | note |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append("| " + " | ".join(cell(r[k]) for k in ("benchmark", "figure", "value", "goal"))
                     + f" | {ok_mark(r['ok'])} | {cell(r['note'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="each script's full sizes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every bench (default 1)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these (flops, unlearn, eval, cka, ...)")
    ap.add_argument("--demo-metrics", type=Path, default=None, help="the demo's metrics.json (runs/demo/...)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench", help="results folder (runs/bench)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a figure misses its goal")
    ap.add_argument("--width", type=int, default=None, help="table width (default: the terminal's, else 200)")
    args = ap.parse_args(argv)

    mode = "full" if args.full else "quick"
    todo = scripts(args.only)
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    info = machine(args.threads)
    print(f"{len(todo)} bench script(s), {mode} sizes, {args.threads} torch thread(s); logs in {logs}", flush=True)
    sampler = LoadSampler()
    sampler.start()
    t0 = time.perf_counter()
    rows: list[dict] = []
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for script in todo:
            got, runs[script.stem] = run_one(script, args, logs, Path(tmp))
            rows += got
    wall = time.perf_counter() - t0
    load = sampler.stop()

    print()
    print_table(rows, info, mode, args.width)
    failed = [n for n, r in runs.items() if r["rc"] != 0]
    missed = [f"{r['benchmark']}: {r['figure']}" for r in rows if r["ok"] is False and r["figure"] != "script failed"]
    per_script = ", ".join(f"{n.removeprefix('bench_')} {r['seconds']:.0f} s" for n, r in runs.items())
    print(f"wall time {wall:.0f} s ({per_script})")
    print(f"1-min load average: start {load['start']}, mean {load['mean']}, max {load['max']} on {info['cores']} cores "
          "(each bench adds about 1; more means the machine was shared)")  # fmt: skip
    results = {"mode": mode, "machine": info, "load_average": load, "wall_s": round(wall, 1), "scripts": runs,
               "rows": rows}  # fmt: skip
    write_json(args.out / "results.json", results)
    md = args.out / "results.md"
    tmp_md = md.with_name(f".{md.name}.tmp")
    tmp_md.write_text(markdown(rows, info, mode, load, wall))
    os.replace(tmp_md, md)
    print(f"wrote {args.out / 'results.json'} and {md}")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    if missed:
        print(f"missed goal: {'; '.join(missed)}")
    return 1 if failed or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
