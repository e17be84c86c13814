"""Rollout throughput: completion tokens per second of our sampler vs a bare ``model.generate`` on the same prompts.

    .venv/bin/python bench/rollout_throughput.py --runs 5 --out docs/benchmarks.md

The policy is the tiny Qwen2.5-VL (float32, LoRA attached, eval mode), 4 routing prompts of the MoRE protocol, sampled
with temperature 1 and top-k 20, at most 32 new tokens, for group sizes 4, 8 and 16. Ours is
``PolicySampler.sample`` (what rollouts and episodes call: chat template, processor, one ``generate`` call with
``num_return_sequences``, completions trimmed at the stop token, texts decoded); the peer is the processor and one
``model.generate`` call with the same settings and nothing else. Tokens are the completion tokens up to and including
the stop token, counted the same way on both sides; runs are interleaved; the table gives medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from report import publish

from more_lightning.policy.generation import (
    SamplingConfig,
    encode_prompts,
    stop_token_ids,
    tokenizer_of,
    trim_completion,
)
from more_lightning.policy.loading import LoraSettings, PolicyConfig, load_policy
from more_lightning.policy.sampler import PolicySampler
from more_lightning.protocol.prompts import routing_prompt

QUESTIONS = [
    "Which river flows through the capital of France?",
    "Who wrote the novel that the film Blade Runner is based on?",
    "What is the tallest mountain in the Alps?",
    "In which year did the first person walk on the Moon?",
]
SAMPLING = SamplingConfig(temperature=1.0, top_k=20, max_new_tokens=32)


def ours(model, processor, prompts, n: int) -> tuple[float, int]:
    sampler = PolicySampler(model, processor, SAMPLING, batch_prompts=len(prompts), seed=0)
    began = time.perf_counter()
    groups = sampler.sample(prompts, n)
    return time.perf_counter() - began, sum(len(c) for g in groups for c in g.completions)


def bare(model, processor, prompts, n: int) -> tuple[float, int]:
    tokenizer = tokenizer_of(processor)
    torch.manual_seed(0)
    began = time.perf_counter()
    encoded = encode_prompts(processor, prompts)
    with torch.no_grad():
        output = model.generate(
            **encoded,
            max_new_tokens=SAMPLING.max_new_tokens,
            num_return_sequences=n,
            do_sample=True,
            temperature=SAMPLING.temperature,
            top_k=SAMPLING.top_k,
            pad_token_id=tokenizer.pad_token_id,
        )
    seconds = time.perf_counter() - began
    stops = set(stop_token_ids(model, tokenizer))
    new = output[:, encoded["input_ids"].shape[1] :]
    return seconds, sum(len(trim_completion(row, stops, tokenizer.pad_token_id)) for row in new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model, processor = load_policy(PolicyConfig(quantization="none", dtype="float32", lora=LoraSettings(r=8, alpha=16)))
    model.eval()
    prompts = [routing_prompt(q, []) for q in QUESTIONS]
    lines = [
        f"### Rollout throughput vs bare generate ({date.today()}, {platform.machine()}, {os.cpu_count()} CPU cores)",
        "",
        f"`.venv/bin/python bench/rollout_throughput.py --runs {args.runs}`: tiny Qwen2.5-VL float32 + LoRA, 4 routing "
        "prompts, temperature 1, top-k 20, ≤ 32 new tokens; completion tokens per second, medians, runs interleaved.",
        "",
        "| group size | ours tok/s | bare generate tok/s | ours / bare |",
        "|---:|---:|---:|---:|",
    ]
    for n in (4, 8, 16):
        rates = {"ours": [], "bare": []}
        ours(model, processor, prompts, n)  # warm-up
        for _ in range(args.runs):
            for name, run in (("ours", ours), ("bare", bare)):
                seconds, tokens = run(model, processor, prompts, n)
                rates[name].append(tokens / seconds)
        a, b = statistics.median(rates["ours"]), statistics.median(rates["bare"])
        lines.append(f"| {n} | {a:.0f} | {b:.0f} | {a / b:.2f}× |")
        print(lines[-1], flush=True)
    publish(lines, args.out)


if __name__ == "__main__":
    main()
