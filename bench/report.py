"""What every benchmark shares: one measurement in a fresh process (``in_fresh_process``), and its markdown table
printed and appended to a results page (``publish``, ``--out docs/benchmarks.md``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def in_fresh_process(script: str, *args: str) -> dict:
    """Run ``python <script> <args>`` (the script's ``--one`` mode, which prints its result as JSON on its last line)
    in a process of its own, so that one measurement's memory and caches do not reach the next. Returns that JSON, or
    ``{"error": <the last line of stderr>}``."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env)
    if result.returncode:
        return {"error": (result.stderr.strip().splitlines() or [f"rc {result.returncode}"])[-1][:200]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def publish(lines: list[str], out: Path | None) -> None:
    """Print ``lines``; with ``out``, append them to that markdown file after a blank line."""
    print("\n".join(lines))
    if out:
        with out.open("a") as handle:
            handle.write("\n" + "\n".join(lines) + "\n")
