"""Scaling of our Step-GRPO step: time per step as group size, prompts per step and completion length double; peak
memory of bf16 vs NF4 policies.

    .venv/bin/python bench/scaling.py --runs 3 --out docs/benchmarks.md

The configuration of ``bench/step_time_vs_trl.py`` (tiny Qwen2.5-VL + LoRA, text prompts, beta 0.04) with one size
doubled at a time from the base (group 4, 4 prompts, 16 new tokens). Each measurement is a fresh process (median step
time over steps 2..N, and the process's peak RSS); the table gives medians over runs and the ratio to the base, which
is 2.0 for exactly linear growth in the doubled size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from report import publish
from step_time_vs_trl import ours, tiny_rows

BASE = {"group": 4, "prompts": 4, "new_tokens": 16, "quantization": "none", "dtype": "float32"}
VARIANTS = {
    "base (group 4, 4 prompts, 16 tokens, fp32)": {},
    "group 8": {"group": 8},
    "group 16": {"group": 16},
    "8 prompts": {"prompts": 8},
    "16 prompts": {"prompts": 16},
    "32 tokens": {"new_tokens": 32},
    "64 tokens": {"new_tokens": 64},
    "bf16": {"dtype": "bfloat16"},
    "NF4 (bf16 compute)": {"quantization": "nf4", "dtype": "bfloat16"},
}


def measure(settings: dict, steps: int) -> tuple[float, float]:
    command = [sys.executable, __file__, "--one", json.dumps(settings), "--steps", str(steps)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{settings} failed:\n{result.stderr[-3000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    return row["median_step_s"], row["peak_rss_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as folder:
            settings = json.loads(args.one)
            times = ours(args.steps, tiny_rows(False, settings["prompts"]), Path(folder), **settings)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"median_step_s": statistics.median(times), "peak_rss_mib": peak}))
        return
    samples = {name: [] for name in VARIANTS}
    for _ in range(args.runs):
        for name, change in VARIANTS.items():
            samples[name].append(measure(dict(BASE, **change), args.steps))
    lines = [
        f"### Scaling of the step ({date.today()}, {platform.machine()}, {os.cpu_count()} CPU cores, no GPU)",
        "",
        f"`.venv/bin/python bench/scaling.py --runs {args.runs} --steps {args.steps}`: one size changed at a time; "
        "ratio = step time / base step time (2.0 = linear in a doubled size); peak RSS of the whole process.",
        "",
        "| run | s / step | vs base | peak RSS (MiB) |",
        "|---|---:|---:|---:|",
    ]
    base = statistics.median(s for s, _ in samples[next(iter(VARIANTS))])
    for name, rows in samples.items():
        seconds = statistics.median(s for s, _ in rows)
        memory = statistics.median(m for _, m in rows)
        lines.append(f"| {name} | {seconds:.3f} | {seconds / base:.2f}× | {memory:.0f} |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
