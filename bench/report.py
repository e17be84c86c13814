"""Printing a benchmark's markdown table and appending it to a results page (``--out docs/benchmarks.md``)."""

from __future__ import annotations

from pathlib import Path


def publish(lines: list[str], out: Path | None) -> None:
    """Print ``lines``; with ``out``, append them to that markdown file after a blank line."""
    print("\n".join(lines))
    if out:
        with out.open("a") as handle:
            handle.write("\n" + "\n".join(lines) + "\n")
