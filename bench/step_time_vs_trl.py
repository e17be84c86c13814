"""Seconds per optimizer step (rollout + update): more_lightning's Step-GRPO (teacher-forced) vs TRL's GRPOTrainer.

    bash bench/setup_peers.sh          # .venv-bench: our venv plus TRL (not a dependency of more_lightning)
    .venv-bench/bin/python bench/step_time_vs_trl.py --runs 5 --steps 8 --out docs/benchmarks.md

Both sides: the tiny Qwen2.5-VL (``tiny:qwen2.5-vl``, float32, CPU), LoRA r=8 / alpha 16 on the same projections,
group size 4, 4 prompts per optimizer step, at most 16 new tokens (sampled, temperature 1, top-k 20), beta 0.04 (the
KL term on, the reference = adapter disabled), the same reward (share of the letter ``e``), lr 1e-4, one optimizer
step per rollout. Prompts are text only, or text with one image. Each measurement is a fresh process; runs of the
two sides are interleaved; the time of a step is wall time from one optimizer step's end to the next (our
``time/step_s`` is that span less Lightning's logging between steps), median over the steps after the first; the
ratio is ours / TRL's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from report import publish

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "tests" / "fixtures" / "images" / "red_square.png"
QUESTIONS = [
    "Which river flows through the capital of France?",
    "Who wrote the novel that the film Blade Runner is based on?",
    "What is the tallest mountain in the Alps?",
    "In which year did the first person walk on the Moon?",
]
GROUP, PROMPTS, NEW_TOKENS, BETA, LR = 4, 4, 16, 0.04, 1e-4


def step_intervals(ends: list[float]) -> list[float]:
    """Seconds between consecutive optimizer-step ends (the first step, with its warm-up, has no interval)."""
    return [later - earlier for earlier, later in zip(ends, ends[1:], strict=False)]


def letter_reward(texts: list[str]) -> list[float]:
    return [t.count("e") / max(len(t), 1) for t in texts]


def tiny_rows(image: bool, prompts: int) -> list[dict]:
    """Official Step-GRPO rows of the tiny case (the letter reward ignores their golds)."""
    rows = []
    questions = [QUESTIONS[i % len(QUESTIONS)] + " " * (i // len(QUESTIONS)) for i in range(prompts)]
    for question in questions:
        step = {
            "step_type": "ret",
            "system": "Answer briefly.",
            "problem": f"Origin question: {question}\n" + ("<image>" if image else ""),
            "answer": {"query": question, "retriever": ["text retriever"]},
        }
        rows.append({"images": [str(IMAGE)], "steps": [step]} if image else {"steps": [step]})
    return rows


def trl_examples(rows: list[dict]) -> list[dict]:
    """The same prompts as TRL dataset rows (conversational; an image column where a row has one)."""
    from PIL import Image

    examples = []
    for row in rows:
        step = row["steps"][0]
        text = step["problem"].replace("<image>", "")
        if row.get("images"):
            examples.append(
                {
                    "prompt": [
                        {"role": "system", "content": [{"type": "text", "text": step["system"]}]},
                        {"role": "user", "content": [{"type": "text", "text": text}, {"type": "image"}]},
                    ],
                    "image": Image.open(row["images"][0]).convert("RGB"),
                }
            )
        else:
            examples.append(
                {"prompt": [{"role": "system", "content": step["system"]}, {"role": "user", "content": text}]}
            )
    return examples


def ours(
    steps: int,
    rows: list[dict],
    folder: Path,
    model: str = "tiny:qwen2.5-vl",
    group: int = GROUP,
    prompts: int = PROMPTS,
    new_tokens: int = NEW_TOKENS,
    quantization: str = "none",
    dtype: str = "float32",
    shared_prompt: bool = True,
    split: dict[str, list[float]] | None = None,
) -> list[float]:
    """Step times of our teacher-forced Step-GRPO fit on ``rows`` (``split``: per-step rollout/update seconds)."""
    import lightning.pytorch as pl

    from more_lightning.data.datamodule import StepGRPODataModule
    from more_lightning.policy.generation import SamplingConfig
    from more_lightning.policy.loading import LoraSettings, PolicyConfig
    from more_lightning.protocol.parse import parse_answer
    from more_lightning.rewards.scoring import StepScorer
    from more_lightning.rewards.step_rewards import ScoredOutput
    from more_lightning.train.module import LossConfig, MoRELightningModule, OptimizerConfig
    from more_lightning.train.rollout import RolloutCallback

    class LetterScorer(StepScorer):
        def score(self, step_type, gold, completions):
            rewards = letter_reward(completions)
            return [ScoredOutput(r, parse_answer(t)) for r, t in zip(rewards, completions, strict=True)]

    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pl.seed_everything(0)
    rollout = RolloutCallback(
        group_size=group,
        groups_per_rollout=prompts,
        prompts_per_generate=prompts,
        sampling=SamplingConfig(temperature=1.0, top_k=20, max_new_tokens=new_tokens),
        scorer=LetterScorer(),
    )
    module = MoRELightningModule(
        PolicyConfig(
            model=model, quantization=quantization, dtype=dtype, lora=LoraSettings(r=8, alpha=16, dropout=0.0)
        ),
        LossConfig(beta=BETA, entropy_coef=0.0),
        OptimizerConfig(lr=LR),
        rollout=rollout,
        shared_prompt=shared_prompt,
    )
    ends: list[float] = []

    class Clock(pl.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            ends.append(time.perf_counter())
            if split is not None:
                for name, value in trainer.callback_metrics.items():
                    if name.startswith("time/"):
                        split.setdefault(name, []).append(float(value))

    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Clock()],
    )
    trainer.fit(module, datamodule=StepGRPODataModule(str(path), groups_per_batch=prompts))
    return step_intervals(ends)


def trl(
    steps: int,
    rows: list[dict],
    folder: Path,
    model: str = "tiny:qwen2.5-vl",
    group: int = GROUP,
    prompts: int = PROMPTS,
    new_tokens: int = NEW_TOKENS,
) -> list[float]:
    """Step times of TRL's GRPOTrainer on the same prompts, model, LoRA, sampling and beta."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoProcessor, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from more_lightning.policy.loading import LANGUAGE_MODEL_PROJECTIONS, is_vision_language
    from more_lightning.policy.model_source import resolve_model_name

    model = resolve_model_name(model)
    data = Dataset.from_list(trl_examples(rows))
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *args, **kwargs) -> None:
            ends.append(time.perf_counter())

    def reward(completions, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return letter_reward([t if isinstance(t, str) else str(t) for t in texts])

    config = GRPOConfig(
        output_dir=str(folder / "trl"),
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        num_generations=group,
        per_device_train_batch_size=group * prompts,
        max_completion_length=new_tokens,
        temperature=1.0,
        top_k=20,
        beta=BETA,
        learning_rate=LR,
        seed=0,
    )
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LANGUAGE_MODEL_PROJECTIONS, task_type="CAUSAL_LM"
    )
    processing = (AutoProcessor if is_vision_language(model) else AutoTokenizer).from_pretrained(model)
    if getattr(processing, "pad_token", "") is None:
        processing.pad_token = processing.eos_token
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=data,
        peft_config=lora,
        processing_class=processing,
        callbacks=[Clock()],
    )
    trainer.train()
    return step_intervals(ends)


def measure(side: str, steps: int, image: bool) -> float:
    """One fresh process: the median step time of one side."""
    command = [sys.executable, __file__, "--one", side, "--steps", str(steps)] + (["--image"] if image else [])
    result = subprocess.run(
        command, capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false")
    )
    if result.returncode:
        raise RuntimeError(f"{side} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["median_step_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--one", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--image", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as folder:
            times = (ours if args.one == "ours" else trl)(args.steps, tiny_rows(args.image, PROMPTS), Path(folder))
        print(json.dumps({"median_step_s": statistics.median(times)}))
        return
    lines = [
        f"### Step time vs TRL GRPOTrainer ({date.today()}, {platform.machine()}, {os.cpu_count()} CPU cores, no GPU)",
        "",
        f"`.venv-bench/bin/python bench/step_time_vs_trl.py --runs {args.runs} --steps {args.steps}`: tiny Qwen2.5-VL "
        f"float32 + LoRA r=8, group 4 × 4 prompts, 16 new tokens, beta {BETA}; median over runs of each run's median "
        "step time (steps 2..N), runs interleaved.",
        "",
        "| prompts | more_lightning s/step | TRL s/step | ours / TRL |",
        "|---|---:|---:|---:|",
    ]
    for image in (False, True):
        samples = {"ours": [], "trl": []}
        for _ in range(args.runs):
            for side in samples:
                samples[side].append(measure(side, args.steps, image))
        a, b = statistics.median(samples["ours"]), statistics.median(samples["trl"])
        lines.append(f"| {'image + text' if image else 'text'} | {a:.3f} | {b:.3f} | {a / b:.2f}× |")
        print(lines[-1], flush=True)
    publish(lines, args.out)


if __name__ == "__main__":
    main()
