"""Seconds per optimizer step and groups per second: one process vs 2 ranks under DDP, FSDP and FSDP2.

    .venv/bin/python bench/strategies_step_time.py --steps 6 --out docs/operations.md

Each configuration runs ``python -m more_lightning fit`` on the shipped tiny config (teacher-forced, float32 weights so
FSDP can flatten them, one teacher demonstration per group) with a shipped strategy overlay, as a user would. The
step time is the module's ``time/step_s`` (the optimizer step's wall time: its rollout, the forward and backward
passes of its micro-batches, the optimizer step), median over the steps after the first; every rank rolls out
``groups_per_rollout`` groups, so 2 ranks do twice the work per step and ``groups/s`` is the fair comparison. The
peer is the single process in the same run.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from report import publish

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "1 process": [],
    "DDP, 2 ranks": ["--config", str(ROOT / "configs" / "strategies" / "ddp.yaml")],
    "FSDP, 2 ranks": ["--config", str(ROOT / "configs" / "strategies" / "fsdp.yaml")],
    "FSDP2, 2 ranks": ["--config", str(ROOT / "configs" / "strategies" / "fsdp2.yaml")],
}


def run(name: str, overlay: list[str], steps: int, groups: int, threads: int) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "more_lightning", "fit", "--config", str(ROOT / "configs/tiny/fit.yaml")]
        command += overlay + [
            f"--trainer.max_steps={steps}",
            "--trainer.enable_checkpointing=false",
            "--trainer.callbacks=[]",
            f"--data.trajectories={ROOT / 'tests/fixtures/step_grpo_small.jsonl'}",
            "--data.groups_per_batch=8",
            "--model.policy.quantization=none",
            "--model.policy.dtype=float32",
            f"--model.rollout.groups_per_rollout={groups}",
            "--model.rollout.demonstrations=1",
        ]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
        (path,) = Path(folder).rglob("metrics.csv")
        with path.open() as handle:
            return [float(r["time/step_s"]) for r in csv.DictReader(handle) if r.get("time/step_s")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--groups", type=int, default=4, help="groups per rollout phase, per rank")
    parser.add_argument("--out", type=Path, help="append the table to this markdown file")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    for name, overlay in RUNS.items():
        ranks = 1 if name == "1 process" else 2
        seconds = statistics.median(run(name, overlay, args.steps, args.groups, max(1, cores // ranks)))
        rows.append((name, seconds, ranks * args.groups / seconds))
        print(f"{name}: {seconds:.2f} s/step, {rows[-1][2]:.2f} groups/s", flush=True)
    base = rows[0][2]
    lines = [
        f"### Step time by strategy ({date.today()}, {platform.machine()}, {cores} CPU cores, no GPU)",
        "",
        f"`python bench/strategies_step_time.py --steps {args.steps} --groups {args.groups}`: the tiny Qwen2.5-VL in "
        f"float32, teacher-forced, {args.groups} groups of 4 per rank per step, median of steps 2..{args.steps}.",
        "",
        "| run | s / step | groups / s | vs 1 process |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {s:.2f} | {g:.2f} | {g / base:.2f}× |" for name, s, g in rows],
        "",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
