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
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
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


def run_jobs(
    pool: Executor | None,
    jobs: dict[str, tuple[Callable[..., Any], tuple]],
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run ``{name: (function, args)}`` on ``pool`` (inline when ``None``); results in ``jobs``' order.

    A job's exception is raised here, named, once the jobs already running have finished.
    """
    results: dict[str, Any] = {}
    total = len(jobs)
    if pool is None:
        threads = torch.get_num_threads()
        torch.set_num_threads(JOB_THREADS)
        try:
            for k, (name, (fn, args)) in enumerate(jobs.items()):
                if progress:
                    progress(name, k, total)
                results[name] = fn(*args)
        finally:
            torch.set_num_threads(threads)
    else:
        futures: dict[Future, str] = {pool.submit(fn, *args): name for name, (fn, args) in jobs.items()}
        for k, future in enumerate(as_completed(futures)):
            name = futures[future]
            try:
                results[name] = future.result()
            except Exception as exc:
                for other in futures:
                    other.cancel()
                raise RuntimeError(f"job {name!r} failed: {exc}") from exc
            if progress:
                progress(name, k + 1, total)
    if progress:
        progress("done", total, total)
    return {name: results[name] for name in jobs}
