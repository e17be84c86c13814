"""Small helpers shared by tests."""

from __future__ import annotations

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
