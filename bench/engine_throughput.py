"""Rollout engines on the MoRE shape: completion tokens per second and peak memory, ``hf`` vs ``vllm`` (the server
following the policy's LoRA adapter) vs ``vllm-weights`` (its merged weights: ``engine.sync: weights``).

    make setup-vllm
    .venv/bin/python bench/engine_throughput.py --runs 3 --out docs/benchmarks.md

Both engines sample through the samplers the rollout uses (``PolicySampler`` and ``VLLMSampler``: chat template,
encoding, sampling, trimming, decoding): the packaged SmolLM2-135M-Instruct with a fresh LoRA adapter (r=8), the
official MoRE routing prompts (the routing steps of the official Step-GRPO validation rows, ~450 tokens each),
8 prompts × n = 8, at most 64 new tokens, temperature 1, top-k 20. Each engine runs in a fresh process: one warm-up
call, then ``--runs`` timed calls; tokens/s is the median of the calls' generated tokens / seconds. A sync (what each
rollout pays first: the adapter saved and loaded, or merged, written and reloaded) is timed after the calls. Peak
memory is the peak RSS of the process, plus for ``vllm`` the server's processes (sampled every 0.5 s). The server's
start (once per run) is reported apart: it is paid once per ``fit``, not per step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import threading
import time
from datetime import date
from pathlib import Path

from report import in_fresh_process, publish

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT / "tests" / "fixtures" / "official" / "grpo_dataset_valid_head.jsonl"
MODEL = "packaged:smollm2-135m-instruct"
PROMPTS, GROUP, NEW_TOKENS = 8, 8, 64
ENGINES = ("hf", "vllm", "vllm-weights")
SYNC = {"vllm": "lora", "vllm-weights": "weights"}


def routing_prompts(count: int):
    from more_lightning.protocol.records import StepPrompt

    rows = [json.loads(line) for line in OFFICIAL.read_text().splitlines()]
    steps = [row["steps"][0] for row in rows if not row.get("images")]
    return [StepPrompt("ret", s["system"], s["problem"]) for s in (steps[i % len(steps)] for i in range(count))]


class TreePeak:
    """The peak summed RSS of a process tree, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for process in [self.root, *self.root.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.5)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def one(engine: str, runs: int, dtype: str) -> dict:
    from more_lightning.engines.config import EngineConfig
    from more_lightning.policy.generation import SamplingConfig
    from more_lightning.policy.loading import LoraSettings, PolicyConfig, load_policy

    policy = PolicyConfig(model=MODEL, dtype=dtype, lora=LoraSettings(r=8, alpha=16, dropout=0.0))
    sampling = SamplingConfig(temperature=1.0, top_k=20, max_new_tokens=NEW_TOKENS)
    model, processor = load_policy(policy)
    began = time.perf_counter()
    served = None
    if engine in SYNC:
        from more_lightning.engines.launch import open_vllm_engine
        from more_lightning.engines.vllm_sampler import VLLMSampler

        served = open_vllm_engine(EngineConfig(kind="vllm", sync=SYNC[engine]), policy, training=True)
        served.sync_policy(model, version=0)
        sampler = VLLMSampler(served, processor, model, sampling, seed=0)
        peak = TreePeak(served.server.process.pid)
    else:
        from more_lightning.policy.sampler import PolicySampler

        sampler, peak = PolicySampler(model, processor, sampling, batch_prompts=PROMPTS, seed=0), None
    start_s = time.perf_counter() - began
    prompts = routing_prompts(PROMPTS)
    sampler.sample(prompts, GROUP)  # warm-up
    rates = []
    for _ in range(runs):
        began = time.perf_counter()
        groups = sampler.sample(prompts, GROUP)
        seconds = time.perf_counter() - began
        rates.append(sum(len(c) for g in groups for c in g.completions) / seconds)
    sync_s = 0.0
    if served is not None:
        began = time.perf_counter()
        served.sync_policy(model, version=1)
        sync_s = time.perf_counter() - began
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "tok_s": statistics.median(rates),
        "start_s": start_s,
        "sync_s": sync_s,
        "trainer_rss_gib": own / 2**30,
        "server_rss_gib": (peak.stop() / 2**30) if peak else 0.0,
    }


def measure(engine: str, runs: int, dtype: str) -> dict:
    return in_fresh_process(__file__, "--one", engine, "--runs", str(runs), "--dtype", dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--one", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.runs, args.dtype)))
        return
    results = {engine: measure(engine, args.runs, args.dtype) for engine in args.engines}
    lines = [
        f"### Rollout engines on the MoRE shape ({date.today()}, {platform.machine()}, {os.cpu_count()} CPU cores)",
        "",
        f"`.venv/bin/python bench/engine_throughput.py --runs {args.runs} --dtype {args.dtype} "
        f"--engines {' '.join(args.engines)}`: SmolLM2-135M "
        f"{args.dtype} + LoRA r=8 (`vllm`: served as LoRA; `vllm-weights`: merged), official routing prompts, "
        f"{PROMPTS} prompts × n={GROUP}, ≤ {NEW_TOKENS} new tokens, "
        "T 1, top-k 20; one fresh process per engine, median of the timed calls.",
        "",
        "| engine | completion tok/s | / hf | / vllm | start s (once per run) | sync s (per rollout) | trainer RSS GiB "
        "| server RSS GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base, lora = (results.get(name, {}).get("tok_s") for name in ("hf", "vllm"))
    for engine, row in results.items():
        if "error" in row:
            lines.append(f"| {engine} | failed: {row['error']} | | | | | | |")
            continue
        ratios = [f"{row['tok_s'] / other:.1f}×" if other else "" for other in (base, lora)]
        lines.append(
            f"| {engine} | {row['tok_s']:.1f} | {' | '.join(ratios)} | {row['start_s']:.0f} | {row['sync_s']:.1f} | "
            f"{row['trainer_rss_gib']:.2f} | {row['server_rss_gib']:.2f} |"
        )
    publish(lines, args.out)


if __name__ == "__main__":
    main()
