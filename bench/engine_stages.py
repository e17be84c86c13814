"""Rollout engines on whole stages: an evaluation run and on-policy Step-GRPO steps, ``hf`` vs ``vllm``.

    make setup-vllm
    .venv/bin/python bench/engine_stages.py --out docs/benchmarks.md

The tiny configs (the small test corpus in the embedded Weaviate) with the packaged SmolLM2-135M-Instruct as the
policy: an on-policy ``fit`` of ``--steps`` optimizer steps (NF4 + LoRA r=8, 2 episodes × group 4 per step), whose
logged ``time/generation_s`` and ``time/rollout_s`` are medians over steps 2..N; then ``evaluate``
(bf16) on its 12 questions (greedy), timed on a second run in the same process (the first loads the policy, opens
the experts and, for ``vllm``, starts a server). Each engine in a fresh process.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from report import in_fresh_process, publish

ROOT = Path(__file__).resolve().parents[1]
MODEL = "packaged:smollm2-135m-instruct"
ENGINES = ("hf", "vllm")


def _config(name: str, folder: Path) -> Path:
    text = (ROOT / "configs" / "tiny" / name).read_text().replace("tests/fixtures/", f"{ROOT}/tests/fixtures/")
    path = folder / name
    path.write_text(text)
    return path


def one(engine: str, steps: int) -> dict:
    from more_lightning.agent.evaluate import evaluate, evaluate_systems
    from more_lightning.ops.arguments import function_arguments
    from more_lightning.ops.lightning_cli import run_lightning_cli

    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        os.chdir(folder)
        fit = ["fit", "--config", str(_config("fit_on_policy.yaml", folder)), "--trainer.max_steps", str(steps)]
        fit += ["--model.policy.model", MODEL, "--model.rollout.init_args.engine.kind", engine]
        fit += ["--trainer.val_check_interval", str(steps + 1)]
        cli = run_lightning_cli(fit)
        with (Path(cli.trainer.logger.log_dir) / "metrics.csv").open() as handle:
            rows = [r for r in csv.DictReader(handle) if float(r.get("time/generation_s") or 0) > 0]
        args = ["--config", str(_config("eval.yaml", folder)), "--policy.model", MODEL, "--engine.kind", engine]
        arguments = function_arguments(evaluate, args + ["--output_dir", str(folder / "eval")])
        evaluate_systems(**arguments)  # loads, opens, starts (the fit indexed the corpus)
        began = time.perf_counter()
        evaluate_systems(**arguments)
        evaluate_s = time.perf_counter() - began
    later = rows[1:] or rows
    return {
        "evaluate_s": evaluate_s,
        "generation_s": statistics.median(float(r["time/generation_s"]) for r in later),
        "rollout_s": statistics.median(float(r["time/rollout_s"]) for r in later),
    }


def measure(engine: str, steps: int) -> dict:
    return in_fresh_process(__file__, "--one", engine, "--steps", str(steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--one", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.steps)))
        return
    results = {engine: measure(engine, args.steps) for engine in args.engines}
    lines = [
        f"### Rollout engines on whole stages ({date.today()}, {platform.machine()}, {os.cpu_count()} CPU cores)",
        "",
        f"`.venv/bin/python bench/engine_stages.py --steps {args.steps}`: the tiny configs with SmolLM2-135M bf16 + "
        "LoRA r=8; `evaluate` on 12 questions (second run in the process), on-policy `fit` (median of steps "
        f"2..{args.steps}).",
        "",
        "| engine | evaluate s | / hf | on-policy generation s/step | / hf | rollout s/step | / hf |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = results.get("hf", {})
    for engine, row in results.items():
        if "error" in row:
            lines.append(f"| {engine} | failed: {row['error']} | | | | | |")
            continue
        cells = []
        for key in ("evaluate_s", "generation_s", "rollout_s"):
            ratio = f"{base[key] / row[key]:.1f}× faster" if key in base and engine != "hf" else ""
            cells += [f"{row[key]:.1f}", ratio]
        lines.append(f"| {engine} | " + " | ".join(cells) + " |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
