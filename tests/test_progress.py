"""Progress when stdout is not a terminal: plain lines, not a bar drawn only at the end."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from more_lightning.experts.progress import LineProgress, progress_bar

pytestmark = pytest.mark.unit


def test_a_pipe_gets_plain_progress_lines(capsys):
    progress = progress_bar(console=Console(file=io.StringIO()))
    assert isinstance(progress, LineProgress)
    with progress:
        task = progress.add_task("questions", total=3)
        for _ in range(3):
            progress.advance(task)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("questions: 1/3") and lines[-1].startswith("questions: 3/3")
    assert len(lines) == 2, "one line at the start, then every few seconds, and one when done"


def test_a_terminal_gets_the_rich_bar():
    assert not isinstance(progress_bar(console=Console(file=io.StringIO(), force_terminal=True)), LineProgress)
