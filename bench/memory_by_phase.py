"""Peak memory by phase of one Step-GRPO step on the MoRE shape: load, sample, training forward, backward.

    .venv/bin/python bench/memory_by_phase.py --prompts 4 --path shared
    .venv/bin/python bench/memory_by_phase.py --prompts 1 --path plain

The packaged SmolLM2-135M-Instruct (float32) + LoRA r=8, the official routing prompts of
``bench/more_shape_vs_trl.py``, group 8, ≤ 64 new tokens. Prints the process's peak RSS after each phase (peak RSS
only grows, so each line is the peak so far) and the phase's seconds.
"""

from __future__ import annotations

import argparse
import resource
import time

from more_shape_vs_trl import GROUP, MODEL, NEW_TOKENS, routing_rows


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--path", choices=["shared", "plain"], default="shared")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    from more_lightning.policy.generation import SamplingConfig, sample_completions
    from more_lightning.policy.loading import LoraSettings, PolicyConfig, load_policy
    from more_lightning.policy.shared_prompt import group_token_stats
    from more_lightning.protocol.records import StepPrompt

    shared = args.path == "shared"
    began = time.perf_counter()
    policy = PolicyConfig(
        model=MODEL,
        dtype="float32",
        lora=LoraSettings(r=8, alpha=16, dropout=0.0),
        gradient_checkpointing=args.gradient_checkpointing,
    )
    model, processor = load_policy(policy)
    print(f"load      {time.perf_counter() - began:6.1f} s   peak {peak_gib():5.2f} GiB", flush=True)
    prompts = [StepPrompt("ret", r["steps"][0]["system"], r["steps"][0]["problem"]) for r in routing_rows(args.prompts)]
    model.eval()
    began = time.perf_counter()
    sampling = SamplingConfig(max_new_tokens=NEW_TOKENS, top_k=20)
    inputs, completions = sample_completions(model, processor, prompts, GROUP, sampling, 0, shared_prefill=shared)
    print(f"sample    {time.perf_counter() - began:6.1f} s   peak {peak_gib():5.2f} GiB", flush=True)
    model.train()
    began = time.perf_counter()
    logprobs, entropy, mask = group_token_stats(model, inputs, completions, processor.pad_token_id, shared=shared)
    print(f"forward   {time.perf_counter() - began:6.1f} s   peak {peak_gib():5.2f} GiB", flush=True)
    began = time.perf_counter()
    ((logprobs * mask).sum() + (entropy * mask).sum()).backward()
    print(f"backward  {time.perf_counter() - began:6.1f} s   peak {peak_gib():5.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
