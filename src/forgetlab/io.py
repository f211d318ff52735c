"""Atomic writes: every file and folder forgetlab produces appears whole or not at all.

A crash (or SIGKILL) in the middle of a save leaves the previous result untouched: the
new content is written under a temporary name in the same folder and renamed into place.
A folder replaces its previous version in one ``renameat2(RENAME_EXCHANGE)`` where the
filesystem supports it (two renames elsewhere; a version caught between them is put back by
the next write). A write that fails (disk full, permissions) raises :class:`WriteFailed`
naming the target, and its temporary file is removed; temporaries of a killed writer are
removed by the next write of the same target.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class WriteFailed(OSError):
    """Writing an output failed (e.g. disk full); nothing partial was left at the target.

    ``errno`` is the cause's; the message names the target.
    """

    def __str__(self) -> str:
        return str(self.strerror)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    """Flush a written file to disk before it is renamed into place (a full disk often shows up here)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            _fsync_file(p)
    _fsync_dir(folder)


def _tag() -> str:
    """Host and pid in temporary names, so a later writer can tell a dead writer's leftovers."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead_leftovers(path: Path) -> list[Path]:
    """Temporaries of ``path`` left by a writer on this host that no longer runs."""
    host = socket.gethostname().replace(".", "_")
    out = []
    for kind in ("tmp", "old"):
        for p in path.parent.glob(f".{path.name}.{kind}-{host}-*"):
            pid = p.name.removeprefix(f".{path.name}.{kind}-{host}-").split(".", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                out.append(p)
    return out


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _clean_leftovers(path: Path) -> None:
    """Remove a killed writer's temporaries; put back a previous version caught between two renames."""
    for p in _dead_leftovers(path):
        if p.name.startswith(f".{path.name}.old-") and not path.exists():
            os.replace(p, path)
        else:
            _remove(p)


def _failed(exc: OSError, path: Path) -> WriteFailed:
    hint = " (disk full: free some space and rerun)" if exc.errno == errno.ENOSPC else ""
    return WriteFailed(
        exc.errno or errno.EIO,
        f"writing {path} failed: {exc.strerror or exc}{hint}; nothing partial was left there "
        "(a previous version, if any, is untouched)",
    )


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; it is renamed over ``path`` on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clean_leftovers(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{_tag()}.", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _failed(exc, path) from exc
    try:
        yield Path(tmp)
        _fsync_file(Path(tmp))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteFailed):
            raise _failed(exc, path) from exc
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2``); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a))


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one step.

    An existing ``path`` is exchanged with the new folder atomically (or, where the filesystem
    cannot, moved aside first and deleted only after the new folder is in place), so at every
    instant one complete version exists.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clean_leftovers(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{_tag()}.", dir=path.parent))
    except OSError as exc:
        raise _failed(exc, path) from exc
    old = path.with_name(f".{path.name}.old-{_tag()}")
    try:
        yield tmp
        _fsync_tree(tmp)
        if path.exists() and _exchange(tmp, path):
            _fsync_dir(path.parent)
            shutil.rmtree(tmp, ignore_errors=True)  # now the previous version
            return
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)  # the second rename failed: put the previous version back
        if isinstance(exc, OSError) and not isinstance(exc, WriteFailed):
            raise _failed(exc, path) from exc
        raise


def _clean(value: Any) -> Any:
    """Replace non-finite floats by None so JSON stays valid and says 'undefined'."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically; NaN/inf become ``null`` (never invalid JSON)."""
    with atomic_file(path) as f:
        json.dump(_clean(data), f, indent=2, sort_keys=False, allow_nan=False)
        f.write("\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Write JSON lines atomically."""
    with atomic_file(path) as f:
        for row in rows:
            f.write(json.dumps(_clean(row), allow_nan=False) + "\n")
