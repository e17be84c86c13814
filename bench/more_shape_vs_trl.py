"""The MoRE shape: seconds per Step-GRPO step and peak memory, shared prompt vs plain vs TRL's GRPOTrainer.

    bash bench/setup_peers.sh          # .venv-bench: our venv plus TRL (not a dependency of more_lightning)
    .venv-bench/bin/python bench/more_shape_vs_trl.py --prompts 2 4 --out docs/benchmarks.md

Both sides: the packaged SmolLM2-135M-Instruct (real weights, float32, CPU), LoRA r=8 / alpha 16 on the same
projections, the official MoRE routing prompts (system prompt with its rules + ``Origin question: …``, ~450 tokens,
from the official Step-GRPO validation rows in ``tests/fixtures/official/``), group 8, 2 or 4 prompts per optimizer
step, at most 64 new tokens (sampled, temperature 1, top-k 20), beta 0.04, one optimizer step per rollout, the same
reward (share of the letter ``e``: the step's cost does not depend on it). Each cell is one fresh process: the median
step time over steps 2..N, and the process's peak RSS. Ours also reports the split of its step (generation,
old/reference log-probs, update). The last line is ``ratio <ours shared / TRL>`` at the first prompt count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
from datetime import date
from pathlib import Path

from report import in_fresh_process, publish
from step_time_vs_trl import ours, trl

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT / "tests" / "fixtures" / "official" / "grpo_dataset_valid_head.jsonl"
MODEL = "packaged:smollm2-135m-instruct"
GROUP, NEW_TOKENS = 8, 64
SIDES = ("shared", "plain", "trl")


def routing_rows(prompts: int) -> list[dict]:
    """The first (routing) step of each text-only official row, as one-step rows, cycled to ``prompts`` rows."""
    official = [json.loads(line) for line in OFFICIAL.read_text().splitlines()]
    steps = [{"steps": [row["steps"][0]]} for row in official if not row.get("images")]
    return [steps[i % len(steps)] for i in range(prompts)]


def one(side: str, prompts: int, steps: int) -> dict:
    split: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        rows = routing_rows(prompts)
        common = {"model": MODEL, "group": GROUP, "prompts": prompts, "new_tokens": NEW_TOKENS}
        if side == "trl":
            times = trl(steps, rows, Path(folder), **common)
        else:
            times = ours(
                steps, rows, Path(folder), dtype="float32", shared_prompt=side == "shared", split=split, **common
            )
    return {
        "median_step_s": statistics.median(times),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "split": {k: statistics.median(v[1:] or v) for k, v in split.items()},
    }


def measure(side: str, prompts: int, steps: int) -> dict:
    return in_fresh_process(__file__, "--one", side, "--prompts", str(prompts), "--steps", str(steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--one", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.prompts[0], args.steps)))
        return
    lines = [
        f"### The MoRE shape vs TRL GRPOTrainer ({date.today()}, {platform.machine()}, {os.cpu_count()} CPU cores)",
        "",
        f"`.venv-bench/bin/python bench/more_shape_vs_trl.py --prompts {' '.join(map(str, args.prompts))} "
        f"--steps {args.steps}`: SmolLM2-135M float32 + LoRA r=8, official routing prompts, group {GROUP}, "
        f"≤ {NEW_TOKENS} new tokens, beta 0.04; one fresh process per cell (median of steps 2..{args.steps}).",
        "",
        "| prompts/step | side | s/step | peak RSS GiB | generation s | log-probs s | update s | / TRL |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    first_ratio = None
    for prompts in args.prompts:
        results = {side: measure(side, prompts, args.steps) for side in args.sides}
        trl_time = results.get("trl", {}).get("median_step_s")
        for side, row in results.items():
            if "error" in row:
                lines.append(f"| {prompts} | {side} | failed: {row['error']} | | | | | |")
                continue
            split = row["split"]
            cells = [split.get(f"time/{k}") for k in ("generation_s", "logprobs_s", "update_s")]
            ratio = row["median_step_s"] / trl_time if trl_time else None
            if side == "shared" and first_ratio is None and ratio is not None:
                first_ratio = ratio
            lines.append(
                f"| {prompts} | {side} | {row['median_step_s']:.1f} | {row['peak_rss_gib']:.1f} | "
                + " | ".join(f"{c:.1f}" if c is not None else "-" for c in cells)
                + f" | {f'{ratio:.2f}×' if ratio is not None else '-'} |"
            )
            print(lines[-1], flush=True)
    publish(lines, args.out)
    print(f"ratio {first_ratio:.2f}" if first_ratio is not None else "ratio n/a")


if __name__ == "__main__":
    main()
