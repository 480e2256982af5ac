"""A transient rich progress bar on stderr, shared by the long-running commands.

with ProgressBar("planning") as update:      # update(done, total, label), or None
    for i, item in enumerate(items):
        update(i, len(items), item)
"""

from __future__ import annotations

from collections.abc import Callable


class ProgressBar:
    """Entering starts the bar and returns `update(done, total, label)` (None when
    `enabled` is false); the bar reads `<verb> <label>` and disappears on exit."""

    def __init__(self, verb: str, *, enabled: bool = True, elapsed: bool = False):
        self.verb = verb
        self.enabled = enabled
        self.elapsed = elapsed
        self.bar = None
        self.task = None

    def __enter__(self) -> Callable[[int, int, str], None] | None:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
        if self.elapsed:
            columns.append(TimeElapsedColumn())
        self.bar = Progress(*columns, console=Console(stderr=True), transient=True)
        self.bar.start()
        return self.update

    def update(self, done: int, total: int, label: str) -> None:
        assert self.bar is not None
        if self.task is None:
            self.task = self.bar.add_task(label, total=total)
        self.bar.update(self.task, completed=done, total=total, description=f"{self.verb} {label}")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
