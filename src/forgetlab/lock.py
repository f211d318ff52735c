"""One writer per output folder, and no command writing over its own inputs.

:func:`output_lock` holds ``.<name>.lock`` next to an output folder for the whole run (next to it,
not inside: unlearning replaces the folder in one rename). The file records who holds it (pid,
host, start time, command); the hold itself is an exclusive ``flock`` on that file, which the
kernel drops when the holder dies, so a lock left by a killed run (SIGKILL, OOM, lost node) is
detected as stale and taken over, while a second live run is refused with a message naming the
first. POSIX only (``fcntl``), as is the rest of the toolkit.

:func:`check_not_input` refuses an output folder that is, contains or lies inside an input
folder (e.g. ``--out`` equal to ``--model``): a command never modifies the model it reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class OutputLocked(RuntimeError):
    """Another live run holds the output folder's lock."""


@dataclass(frozen=True)
class LockInfo:
    """Who holds (or held) a lock."""

    pid: int
    host: str
    started: str
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started} ({self.command})"


def lock_path(out: str | Path) -> Path:
    """The lock file of an output folder: a hidden sibling, ``.<name>.lock``."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.lock"


def read_lock(path: str | Path) -> LockInfo | None:
    """The holder recorded in a lock file (None when absent or unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
        return LockInfo(int(data["pid"]), str(data["host"]), str(data["started"]), str(data.get("command", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _me() -> LockInfo:
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    return LockInfo(os.getpid(), socket.gethostname(), started, " ".join(sys.argv[:3]) or "python")


def _open_locked(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path`` (the file the path names now), or None if held."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # the previous holder may have unlinked the file between our open and our flock: retry on the new one
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def output_lock(out: str | Path, *, warn: Callable[[str], None] | None = None) -> Iterator[LockInfo]:
    """Hold the lock of output folder ``out`` for the duration of the block.

    Raises :class:`OutputLocked` naming the holder when another live process holds it. A lock
    file left by a dead process is taken over; ``warn`` (a callable taking one string, default
    stderr) is told so.
    """
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_locked(path)
    if fd is None:
        holder = read_lock(path)
        who = holder.describe() if holder else "another process (lock file unreadable)"
        raise OutputLocked(
            f"output folder {Path(out)} is in use by {who}; wait for it to finish, or choose another output "
            f"folder. If that run is gone, delete {path}"
        )
    try:
        previous = read_lock(path)
        me = _me()
        if previous is not None and previous.pid != me.pid:
            gone = previous.host == me.host and not _alive(previous.pid)
            state = "no longer running" if gone else "no longer holding it"
            message = f"taking over a stale lock on {Path(out)}: {previous.describe()} is {state}"
            (warn or (lambda m: print(f"warning: {m}", file=sys.stderr)))(message)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(asdict(me)) + "\n").encode(), 0)
        os.fsync(fd)
        yield me
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # unlink before unlocking: a waiter then retries on a fresh file
        os.close(fd)


def locks_output(where: Callable[..., str | Path]) -> Callable[[F], F]:
    """Decorator: hold :func:`output_lock` of the folder ``where(*args, **kwargs)`` for each call."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with output_lock(where(*args, **kwargs)):
                return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies inside it."""
    return a == b or b in a.parents


def check_not_input(out: str | Path, inputs: dict[str, str | Path | None]) -> None:
    """Refuse an output folder that is, contains or lies inside one of the ``inputs`` (name -> folder)."""
    target = Path(out).resolve()
    for name, value in inputs.items():
        if value is None:
            continue
        source = Path(value).resolve()
        if _inside(target, source) or _inside(source, target):
            raise ValueError(
                f"output folder {out} overlaps the {name} folder {value}: forgetlab never writes into the "
                "folders it reads; choose another output folder"
            )


def check_replaceable(out: str | Path, marker: str, what: str) -> None:
    """The one output-folder guard: refuse to replace ``out`` unless it is missing, an empty folder, or a
    previous output of the same kind (it holds ``marker``). ``what`` names that kind in the error."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).exists())):
        raise ValueError(f"refusing to replace {out}: it exists and is not {what} (no {marker})")
