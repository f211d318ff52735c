"""Rich progress bars for long steps, as a small context manager."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextlib.contextmanager
def progress_bar(title: str, console: Console | None = None) -> Iterator[Callable[[str, int, int], None]]:
    """Yield ``update(stage, done, total)``; draws one bar that follows the latest stage."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=False,
    ) as progress:
        task = progress.add_task(title, total=None)

        def update(stage: str, done: int, total: int) -> None:
            progress.update(task, description=f"{title}: {stage}", completed=done, total=total)

        yield update
