"""Progress of long loops (indexing, evaluation): a rich bar on a terminal, a plain line every few seconds otherwise.

``make demo | tee log`` is how many users run the demo; rich draws nothing until the end when stdout is not a
terminal, so there :class:`LineProgress` prints ``description: done/total (rate, elapsed)`` instead.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import Progress, TaskID

LINE_EVERY_S = 5.0
"""Seconds between two progress lines when stdout is not a terminal."""


class LineProgress(Progress):
    """A :class:`rich.progress.Progress` that prints one plain line per task every ``every`` seconds and when done."""

    def __init__(self, every: float = LINE_EVERY_S) -> None:
        super().__init__(disable=True)
        self.every = every
        self._printed_at: dict[TaskID, float] = {}

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        task = self._tasks[task_id]
        now = time.monotonic()
        if task.finished or now - self._printed_at.get(task_id, float("-inf")) >= self.every:
            self._printed_at[task_id] = now
            total = f"/{task.total:,.0f}" if task.total is not None else ""
            rate = f", {task.speed:,.1f}/s" if task.speed else ""
            print(f"{task.description}: {task.completed:,.0f}{total}{rate}, {task.elapsed or 0:.0f} s", flush=True)


def progress_bar(*columns, console: Console | None = None) -> Progress:
    """A rich bar with ``columns`` (rich's default ones if none) on a terminal, else a :class:`LineProgress`."""
    console = console or Console()
    if not console.is_terminal:
        return LineProgress()
    return Progress(*columns, console=console)
