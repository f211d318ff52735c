"""Independent jobs on several one-thread worker processes.

A tiny model's step is too small to keep two cores busy with intra-op threads (two threads
speed a step up by far less than 2x), so the demo runs independent jobs — a method's sweep,
a regime, one model's verification — side by side in worker processes with one torch
thread each. One thread per job also makes every job's numbers independent of how many
workers run: a job computes the same bits alone or beside another.

Workers die with the process that started them (``PR_SET_PDEATHSIG`` on Linux, a parent
watchdog elsewhere), so a run killed with SIGKILL leaves no job writing into its folder.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

import torch

#: torch threads of every job, inline or in a worker: the numbers do not depend on the worker count
JOB_THREADS = 1


def default_workers() -> int:
    """One worker per core, at most 4 (the demo rarely has more independent jobs at once)."""
    return max(1, min(os.cpu_count() or 1, 4))


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _init_worker(parent: int) -> None:
    from transformers.utils import logging as hf_logging

    _die_with_parent(parent)
    torch.set_num_threads(JOB_THREADS)
    hf_logging.disable_progress_bar()  # no per-file loading bars under the demo's own progress bars


@contextmanager
def worker_pool(workers: int) -> Iterator[Executor | None]:
    """A process pool of ``workers`` one-thread workers, or ``None`` (run inline) for ``workers <= 1``."""
    if workers <= 1:
        yield None
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(os.getpid(),)) as pool:
        yield pool


Job = tuple[Callable[..., Any], tuple]


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, tuple[float, float]]:
    """``fn(*args)`` and the wall-clock times (``time.time()``) it started and ended."""
    start = time.time()
    result = fn(*args)
    return result, (start, time.time())


def _note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` where Python has it (3.11+)."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)


def run_jobs(
    pool: Executor | None,
    jobs: dict[str, Job],
    progress: Callable[[str, int, int], None] | None = None,
    then: Callable[[str, Any], dict[str, Job]] | None = None,
    spans: dict[str, tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """Run ``{name: (function, args)}`` on ``pool`` (inline when ``None``); results in submission order.

    ``then(name, result)`` is called here as each job finishes and returns more jobs to run (new
    names). That is how a job needing another's result starts as soon as it can — a model is
    verified once its sweep has chosen it — instead of after a whole phase, which would leave a
    worker idle while the phase's longest job finishes.

    A job's exception is raised here, as itself (so callers handle it as they would inline) with a note
    naming the job, once the jobs already running have finished. ``spans``, when given, receives each
    finished job's wall-clock ``(start, end)`` (``time.time()``): where a run's time went.
    """
    spans = {} if spans is None else spans
    results: dict[str, Any] = {}
    order = list(jobs)

    def follow(name: str) -> dict[str, Job]:
        new = then(name, results[name]) if then else {}
        clash = sorted(set(new) & set(order))
        if clash:
            raise ValueError(f"job names already used: {clash}")
        order.extend(new)
        return new

    if pool is None:
        threads = torch.get_num_threads()
        torch.set_num_threads(JOB_THREADS)
        try:
            queue = deque(jobs.items())
            while queue:
                name, (fn, args) = queue.popleft()
                if progress:
                    progress(name, len(results), len(order))
                try:
                    results[name], spans[name] = _timed(fn, *args)
                except Exception as exc:
                    _note(exc, f"in job {name!r}")
                    raise
                queue.extend(follow(name).items())
        finally:
            torch.set_num_threads(threads)
    else:
        running: dict[Future, str] = {pool.submit(_timed, fn, *args): name for name, (fn, args) in jobs.items()}
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                try:
                    results[name], spans[name] = future.result()
                    more = follow(name)
                except Exception as exc:
                    for other in running:
                        other.cancel()
                    _note(exc, f"in job {name!r}")
                    raise
                if progress:
                    progress(name, len(results), len(order))
                running |= {pool.submit(_timed, fn, *args): n for n, (fn, args) in more.items()}
    if progress:
        progress("done", len(order), len(order))
    return {name: results[name] for name in order}
