"""Progress of long stages (indexing, evaluation, fits, the model conversion): a rich bar on a terminal, a plain line at
least every ``LINE_EVERY_S`` seconds otherwise.

``make demo > log`` is how many users run the demo; rich draws nothing until the end when stdout is not a terminal,
so there :class:`LineProgress` prints ``stage: done/total unit, status, elapsed, time left`` instead: when the count
moves (at most once per interval), from a background thread while a long call runs without moving it (a batch of
episodes, a rollout), and once when a task finishes. A task's ``status`` field (the latest reward, the routing mix, the
batch) is shown on both the bar and the lines.
"""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

LINE_EVERY_S = 10.0
"""Seconds between two progress lines when stdout is not a terminal."""


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``: a duration a reader takes in at a glance."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_line(task: Task, elapsed: float) -> str:
    """``description: done/total unit, status, elapsed, ~left``: the time left from the mean rate since the task began
    (at its ``start_count`` field, e.g. a resumed run's step), counting the ``partial`` field's share of the unit in
    progress (a batch of questions half through its stages), so the estimate does not grow while a long unit runs."""
    parts = [f"{task.completed:,.0f}/{task.total:,.0f}" if task.total is not None else ""]
    unit = task.fields.get("unit")
    if unit and parts[0]:
        parts[0] += f" {unit}"
    if status := task.fields.get("status"):
        parts.append(status)
    parts.append(duration(elapsed))
    partial = task.fields.get("partial", 0)
    done = task.completed + partial - task.fields.get("start_count", 0)
    if task.total and done > 0 and task.completed < task.total:
        parts.append(f"~{duration(elapsed / done * (task.total - task.completed - partial))} left")
    return f"{task.description}: {', '.join(p for p in parts if p)}"


class LineProgress(Progress):
    """A :class:`rich.progress.Progress` that prints one plain line per unfinished task at least every ``every``
    seconds while it runs, and one when a task finishes."""

    def __init__(self, every: float = LINE_EVERY_S) -> None:
        super().__init__(disable=True)
        self.every = every
        self._printed_at: dict[TaskID, float] = {}
        self._started_at: dict[TaskID, float] = {}
        self._finished: set[TaskID] = set()  # their last line is printed
        self._stopped = threading.Event()
        self._beat: threading.Thread | None = None

    def add_task(self, description: str, *args, **kwargs) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self._started_at[task_id] = time.monotonic()
        self._printed_at[task_id] = float("-inf")  # the first move prints at once
        return task_id

    def update(self, task_id: TaskID, *args, **kwargs) -> None:
        super().update(task_id, *args, **kwargs)
        self._maybe_print(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_print(task_id)

    def _maybe_print(self, task_id: TaskID) -> None:
        with self._lock:
            task = self._tasks.get(task_id)  # None: removed while the heartbeat looked at it
            now = time.monotonic()
            if (
                task is None
                or task_id in self._finished
                or not (task.finished or now - self._printed_at[task_id] >= self.every)
            ):
                return
            self._printed_at[task_id] = now
            if task.finished:
                self._finished.add(task_id)
            print(progress_line(task, now - self._started_at[task_id]), flush=True)

    def _heartbeat(self) -> None:
        while not self._stopped.wait(min(1.0, self.every)):
            for task_id in list(self._tasks):
                self._maybe_print(task_id)

    def start(self) -> None:
        self._stopped.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="progress-lines", daemon=True)
        self._beat.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None


class StatusColumn(ProgressColumn):
    """A task's ``status`` field (empty when it has none)."""

    def render(self, task: Task) -> Text:
        return Text(task.fields.get("status", ""))


def default_columns() -> tuple:
    """The bar's columns for a counted stage: description, bar, done/total, time elapsed and left, the ``status``."""
    return (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        StatusColumn(),
    )


def progress_bar(*columns, console: Console | None = None, every: float = LINE_EVERY_S) -> Progress:
    """A rich bar with ``columns`` (:func:`default_columns` if none) on a terminal, else a :class:`LineProgress`."""
    console = console or Console()
    if not console.is_terminal:
        return LineProgress(every)
    return Progress(*(columns or default_columns()), console=console)
