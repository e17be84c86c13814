"""Small helpers shared by tests."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil


def _live_children() -> list[psutil.Process]:
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            continue
    return alive


def child_processes_named(fragment: str) -> list[psutil.Process]:
    """Live child processes of this test process whose command line contains ``fragment``."""
    return [c for c in _live_children() if fragment in " ".join(c.cmdline())]


def weaviate_processes_serving(data_dir: Path) -> list[psutil.Process]:
    """Live child processes that serve the Weaviate data folder ``data_dir``."""
    wanted = str(Path(data_dir).resolve())
    found = []
    for child in _live_children():
        try:
            if child.environ().get("PERSISTENCE_DATA_PATH") == wanted:
                found.append(child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@dataclass
class CommandResult:
    """A command line's exit status and what it printed, as ``subprocess.run`` reports them."""

    returncode: int
    stdout: str
    stderr: str


@contextmanager
def command_context(cwd: Path | None):
    """Run a command in this process as it would run in its own: from ``cwd``, without pytest's ``sys.argv``, and
    with the working directory and the environment (Lightning's seed variables, the distributed ones) restored
    afterwards."""
    environment, directory, argv = dict(os.environ), Path.cwd(), sys.argv
    sys.argv = sys.argv[:1]  # LightningCLI warns when it is given arguments and sys.argv holds pytest's
    try:
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        sys.argv = argv
        os.chdir(directory)
        os.environ.clear()
        os.environ.update(environment)


def run_in_process(capsys, args: list[str], cwd: Path | None = None) -> CommandResult:
    """Run ``python -m more_lightning <args>`` in this process (``cli.main``) from ``cwd``; a subprocess would spend
    ~15 s importing first."""
    from more_lightning import cli

    capsys.readouterr()
    with command_context(cwd):
        status = cli.main(args)
    out, err = capsys.readouterr()
    return CommandResult(status, out, err)
