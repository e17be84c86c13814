"""Peak memory of the rollout's log-prob pass and of one update at the 7B QLoRA recipe's memory-driving shapes, on CPU.

    .venv/bin/python bench/logprob_memory.py --logprob-groups 8 2

What sets the memory of these passes is the logits, not the hidden size: the vocabulary (152,064, Qwen2.5's), the
completions (256 tokens: a random policy never stops early), the rollout (8 groups × 5 samples) and the prompts
(~1.3k tokens). So a Qwen2 text model with that vocabulary, a hidden size of 64 and 2 layers (random weights) stands
in for Qwen2.5-VL-7B, loaded as ``configs/qlora_7b_single_gpu.yaml`` loads it (NF4, bf16 compute, LoRA r=64, gradient
checkpointing; ``load_policy``). The groups go through the shared-prompt path (the default).

- ``logprobs``: one log-prob pass over the rollout's 8 groups, as the reference pass runs it (no grad, adapter
  disabled), ``--logprob-groups`` groups per forward.
- ``update``: forward + backward of one micro-batch (``data.groups_per_batch`` = 2 groups) with the entropy, as
  ``training_step`` runs it.

Each measurement is a fresh process; the number is its peak RSS above its RSS just before the pass (model and inputs
built). To measure the code before a change, run this file with the old package first on the path (e.g. extract
``git archive <commit> more_lightning`` into a folder and set ``PYTHONPATH`` to it): group_token_stats of that commit
has no ``chunk_tokens`` and computes the full logits.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

VOCAB, HIDDEN, LAYERS = 152_064, 64, 2
GROUPS, GROUP_SIZE, COMPLETION, PROMPT = 8, 5, 256, 1_300
MICRO_BATCH = 2


def build_model(folder: Path) -> None:
    """The narrow Qwen2 with the real vocabulary, saved with the tiny model's tokenizer (ids only matter here)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from more_lightning.policy.tiny import tiny_model_path

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path())
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def rss_gib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**30


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(folder: str, phase: str, per_pass: int) -> dict:
    """One phase in this process: its peak RSS above the RSS before it, and its seconds."""
    import torch

    from more_lightning.policy.loading import LoraSettings, PolicyConfig, load_policy
    from more_lightning.policy.shared_prompt import group_token_stats

    lora = LoraSettings(r=64, alpha=128, dropout=0.0)
    config = PolicyConfig(folder, quantization="nf4", dtype="bfloat16", lora=lora, gradient_checkpointing=True)
    model, processor = load_policy(config)
    pad = processor.pad_token_id
    generator = torch.Generator().manual_seed(0)
    prompts = [{"input_ids": torch.randint(0, 700, (1, PROMPT), generator=generator)} for _ in range(GROUPS)]
    completions = [
        [torch.randint(0, 700, (COMPLETION,), generator=generator) for _ in range(GROUP_SIZE)] for _ in range(GROUPS)
    ]
    chunked = "chunk_tokens" in inspect.signature(group_token_stats).parameters  # absent before the change
    before = rss_gib()
    began = time.perf_counter()
    if phase == "logprobs":
        model.eval()
        with torch.no_grad(), model.disable_adapter():
            for start in range(0, GROUPS, per_pass):
                chunk = slice(start, start + per_pass)
                group_token_stats(model, prompts[chunk], completions[chunk], pad, with_entropy=False)
    else:
        model.train()
        logprobs, entropy, mask = group_token_stats(model, prompts[:MICRO_BATCH], completions[:MICRO_BATCH], pad)
        ((logprobs * mask).sum() / mask.sum() + 1e-3 * (entropy * mask).sum() / mask.sum()).backward()
    seconds = time.perf_counter() - began
    return {"phase": phase, "per_pass": per_pass, "chunked": chunked, "peak_gib": peak_gib() - before, "s": seconds}


def run(folder: Path, phase: str, per_pass: int) -> dict:
    command = [sys.executable, __file__, "--child", str(folder), phase, str(per_pass)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "Error" in line] or [f"exit {done.returncode}"]
        return {"phase": phase, "per_pass": per_pass, "failed": errors[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logprob-groups", type=int, nargs="+", default=[8, 2], help="groups per log-prob forward")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, phase, per_pass = args.child
        print(json.dumps(measure(folder, phase, int(per_pass))))
        return
    with tempfile.TemporaryDirectory() as folder:
        build_model(Path(folder))
        results = [run(Path(folder), "logprobs", n) for n in args.logprob_groups]
        results.append(run(Path(folder), "update", MICRO_BATCH))
    print(f"{date.today()}, {platform.machine()}, {platform.python_version()}")
    print("| phase | groups per forward | code | peak above start (GiB) | s |")
    for r in results:
        if "failed" in r:
            print(f"| {r['phase']} | {r['per_pass']} | failed: {r['failed']} | | |")
            continue
        code = "chunked" if r["chunked"] else "full logits"
        print(f"| {r['phase']} | {r['per_pass']} | {code} | {r['peak_gib']:.2f} | {r['s']:.1f} |")


if __name__ == "__main__":
    main()
