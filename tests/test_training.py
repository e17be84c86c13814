"""Step-GRPO training on the tiny Qwen2.5-VL with real Lightning trainers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForImageTextToText

from more_lightning.data.datamodule import StepGRPODataModule
from more_lightning.grpo.advantages import has_zero_std
from more_lightning.policy.generation import SamplingConfig, collate_sequences, completion_token_stats, tokenizer_of
from more_lightning.policy.loading import LoraSettings, PolicyConfig
from more_lightning.protocol.parse import parse_answer
from more_lightning.rewards.scoring import StepScorer
from more_lightning.rewards.step_rewards import ScoredOutput
from more_lightning.train.module import LossConfig, MoRELightningModule, OptimizerConfig
from more_lightning.train.rollout import RolloutCallback, teacher_demonstration

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def short_trajectories(path: Path, count: int = 4, image: str | None = None) -> Path:
    """Official-format rows with short prompts (fast on CPU)."""
    rows = []
    for i in range(count):
        steps = [
            {
                "step_type": "ret",
                "system": "Route.",
                "problem": f"Origin question: q{i}?\n" + ("<image>" if image else ""),
                "answer": {"query": f"what is q{i}?", "retriever": ["text retriever"]},
            },
            {"step_type": "ans", "system": "Answer.", "problem": f"Question: q{i}?", "answer": [f"a{i}"]},
        ]
        rows.append({"images": [image], "steps": steps} if image else {"steps": steps})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class LetterScorer(StepScorer):
    """Rewards the share of the letter ``e`` in a completion: learnable by a random tiny model in a minute."""

    def __init__(self) -> None:
        self.mean_rewards: list[float] = []

    def score(self, step_type, gold, completions):
        rewards = [text.count("e") / max(len(text), 1) for text in completions]
        self.mean_rewards.append(sum(rewards) / len(rewards))
        return [ScoredOutput(r, parse_answer(t)) for r, t in zip(rewards, completions, strict=True)]


def make_module(path: str, quantization: str = "none", dtype: str = "float32", lr: float = 1e-3, beta: float = 0.0):
    return MoRELightningModule(
        PolicyConfig(model=path, quantization=quantization, dtype=dtype, lora=LoraSettings(r=8, alpha=16, dropout=0.0)),
        LossConfig(beta=beta, entropy_coef=0.0),
        OptimizerConfig(lr=lr),
    )


def make_trainer(steps: int, callbacks: list, **kwargs) -> pl.Trainer:
    options = {
        "accelerator": "cpu",
        "max_steps": steps,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "gradient_clip_val": 1.0,
    }
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


def test_the_policy_learns_a_learnable_reward(tiny_vl_path, tmp_path):
    """The loss has the right sign and the groups are right: the mean reward rises within a minute."""
    pl.seed_everything(0)
    scorer = LetterScorer()
    rollout = RolloutCallback(
        group_size=8,
        groups_per_rollout=4,
        prompts_per_generate=4,
        sampling=SamplingConfig(max_new_tokens=8),
        scorer=scorer,
    )
    data = StepGRPODataModule(str(short_trajectories(tmp_path / "t.jsonl")), groups_per_batch=4)
    make_trainer(40, [rollout]).fit(make_module(str(tiny_vl_path), lr=3e-3), datamodule=data)
    quarter = len(scorer.mean_rewards) // 4
    first = sum(scorer.mean_rewards[:quarter]) / quarter
    last = sum(scorer.mean_rewards[-quarter:]) / quarter
    print(f"mean reward: first quarter {first:.3f}, last quarter {last:.3f}")
    assert last > first + 0.05 and last > 1.5 * first


def test_a_step_changes_only_lora_and_the_reference_is_the_base_model(tiny_vl_path, tmp_path):
    pl.seed_everything(0)
    module = make_module(str(tiny_vl_path), lr=1e-2, beta=0.01)
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    rollout = RolloutCallback(
        group_size=4, groups_per_rollout=2, sampling=SamplingConfig(max_new_tokens=6), scorer=LetterScorer()
    )
    data = StepGRPODataModule(
        str(short_trajectories(tmp_path / "t.jsonl", image=str(FIXTURES / "images" / "red_square.png"))),
        groups_per_batch=2,
    )
    make_trainer(3, [rollout]).fit(module, datamodule=data)
    changed = {n for n, p in module.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n for n in changed)
    base = AutoModelForImageTextToText.from_pretrained(tiny_vl_path, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    module.model.eval()
    with torch.no_grad(), module.model.disable_adapter():
        reference_logits = module.model(input_ids=ids).logits
    with torch.no_grad():
        assert torch.equal(reference_logits, base(input_ids=ids).logits)
        assert not torch.equal(module.model(input_ids=ids).logits, reference_logits)


def _mean_logprob(model, group, index: int, pad: int) -> float:
    inputs, mask = collate_sequences([group.prompt_inputs], [group.completions[index]], pad)
    model.eval()
    with torch.no_grad():
        logprobs, _ = completion_token_stats(model, inputs, mask, with_entropy=False)
    return float(logprobs.sum() / mask.sum())


def test_a_demonstration_gives_a_base_model_a_signal_and_it_learns_the_format(tiny_vl_path, tmp_path):
    """A random base model never writes the protocol: official rewards are all 0. One teacher demonstration per group
    is the group's best sample, and a few steps raise its likelihood under the policy."""
    pl.seed_everything(0)
    rollout = RolloutCallback(
        group_size=4,
        groups_per_rollout=4,
        prompts_per_generate=4,
        sampling=SamplingConfig(max_new_tokens=8),
        demonstrations=1,
    )
    data = StepGRPODataModule(str(short_trajectories(tmp_path / "t.jsonl")), groups_per_batch=4)
    module = make_module(str(tiny_vl_path), lr=3e-3)
    make_trainer(1, [rollout]).fit(module, datamodule=data)
    groups = module.buffer.groups
    assert len(groups) == 4
    for group in groups:
        assert group.texts[-1] == teacher_demonstration(next(s for s in data.steps if s.prompt == group.prompt))
        assert group.rewards[-1] == group.rewards.max() > 0 and not has_zero_std(group.rewards)
        assert all(parse_answer(t).think is None for t in group.texts[:-1])  # the samples themselves: no tags
    pad = tokenizer_of(module.processor).pad_token_id
    with module.model.disable_adapter():
        before = [_mean_logprob(module.model, g, -1, pad) for g in groups]
    trainer = make_trainer(12, [rollout])
    trainer.fit(module, datamodule=data)
    after = [_mean_logprob(module.model, g, -1, pad) for g in groups]
    print(f"demonstration mean token log-prob: {sum(before) / 4:.2f} -> {sum(after) / 4:.2f}")
    assert all(a > b + 0.2 for a, b in zip(after, before, strict=True))  # all-zero rewards would leave it unchanged


@pytest.mark.parametrize("quantization, dtype", [("nf4", "bfloat16"), ("none", "bfloat16")])
def test_nf4_and_bf16_policies_train_on_cpu(tiny_vl_path, tmp_path, quantization, dtype):
    pl.seed_everything(0)
    module = make_module(str(tiny_vl_path), quantization=quantization, dtype=dtype, beta=0.01)
    rollout = RolloutCallback(
        group_size=4, groups_per_rollout=2, sampling=SamplingConfig(max_new_tokens=6), scorer=LetterScorer()
    )
    data = StepGRPODataModule(str(short_trajectories(tmp_path / "t.jsonl")), groups_per_batch=2)
    make_trainer(2, [rollout]).fit(module, datamodule=data)
    assert module.trainer.global_step == 2
    assert all(p.dtype == torch.float32 for p in module.model.parameters() if p.requires_grad)


def _metrics(log_dir: Path) -> list[dict]:
    (path,) = log_dir.rglob("metrics.csv")
    with path.open() as handle:
        return list(csv.DictReader(handle))


TINY_FIT = ROOT / "configs" / "tiny" / "fit.yaml"
TINY_TRAJECTORIES = ROOT / "tests" / "fixtures" / "step_grpo_small.jsonl"


def test_fit_cli_on_the_tiny_config_saves_a_peft_adapter(run_cli, tmp_path):
    # run from tmp_path: the config's relative outputs (logs, checkpoints/) land there
    result = run_cli(
        "fit",
        "--config",
        str(TINY_FIT),
        "--trainer.max_steps",
        "4",
        "--data.trajectories",
        str(TINY_TRAJECTORIES),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    adapter = tmp_path / "checkpoints" / "tiny-adapter"
    rows = _metrics(tmp_path / "lightning_logs")
    logged = {k for r in rows for k, v in r.items() if v}
    for key in (
        "reward/ret/mean",
        "reward/ans/mean",
        "frac_reward_zero_std",
        "clip_ratio",
        "kl",
        "entropy",
        "completion_length",
        "parse_failure_rate",
        "time/rollout_s",
        "time/update_s",
    ):
        assert key in logged, key
    config = json.loads((adapter / "adapter_config.json").read_text())
    base = AutoModelForImageTextToText.from_pretrained(config["base_model_name_or_path"], dtype=torch.bfloat16)
    reloaded = PeftModel.from_pretrained(base, adapter).eval()
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in reloaded.named_parameters())


def test_the_step_metrics_time_each_optimizer_step_and_its_parts(run_cli, tmp_path):
    """Two micro-batches per optimizer step, a rollout phase in each step: the logged step time covers its parts."""
    result = run_cli(
        "fit",
        "--config",
        str(TINY_FIT),
        "--trainer.max_steps",
        "3",
        "--trainer.accumulate_grad_batches",
        "2",
        "--data.trajectories",
        str(TINY_TRAJECTORIES),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [{k: float(v) for k, v in r.items() if v} for r in _metrics(tmp_path / "lightning_logs")]
    steps = [r for r in steps if "time/step_s" in r]
    assert len(steps) == 3, "one row of step metrics per optimizer step"
    for row in steps:
        assert row["time/update_s"] > 0 and row["time/generation_s"] > 0 and row["time/logprobs_s"] > 0
        assert row["time/rollout_s"] >= row["time/generation_s"] + row["time/logprobs_s"] + row["time/scoring_s"]
        assert row["time/step_s"] >= row["time/rollout_s"] + row["time/update_s"]
        tokens_per_s = row["rollout/generated_tokens"] / row["time/generation_s"]
        assert row["rollout/tokens_per_s"] == pytest.approx(tokens_per_s, rel=1e-5)


def test_fit_cli_on_official_validation_trajectories(run_cli, tmp_path):
    """A slice of the official grpo_dataset_valid_new.jsonl; its images are looked up by name under image_root."""
    official = FIXTURES / "official" / "grpo_dataset_valid_head.jsonl"
    for line in official.read_text().splitlines():
        for image in json.loads(line).get("images", []):
            (tmp_path / Path(image).name).write_bytes((FIXTURES / "images" / "red_square.png").read_bytes())
    result = run_cli(
        "fit",
        "--config",
        str(TINY_FIT),
        "--trainer.max_steps",
        "3",
        "--data.trajectories",
        str(official),
        "--data.image_root",
        str(tmp_path),
        "--model.policy.quantization",
        "none",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    adapter = tmp_path / "checkpoints" / "tiny-adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    # the adapter reloads with plain PEFT and gives the trained logits
    config = json.loads((adapter / "adapter_config.json").read_text())
    base = AutoModelForImageTextToText.from_pretrained(config["base_model_name_or_path"], dtype=torch.bfloat16)
    reloaded = PeftModel.from_pretrained(base, adapter).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        adapted = reloaded(input_ids=ids).logits
        with reloaded.disable_adapter():
            plain = reloaded(input_ids=ids).logits
    assert not torch.equal(adapted, plain)


def test_bad_rows_and_unparseable_output_are_counted_and_training_goes_on(tiny_vl_path, tmp_path):
    good = short_trajectories(tmp_path / "good.jsonl", count=2).read_text()
    bad = (
        json.dumps({"steps": [{"step_type": "ret", "system": "s", "problem": "p"}]})
        + "\n"
        + json.dumps(
            {
                "images": [str(tmp_path / "missing.png")],
                "steps": [{"step_type": "ans", "system": "s", "problem": "<image>", "answer": "x"}],
            }
        )
        + "\n"
    )
    path = tmp_path / "mixed.jsonl"
    path.write_text(good + bad)
    pl.seed_everything(0)
    logger = pl.loggers.CSVLogger(tmp_path / "logs", name="bad")
    rollout = RolloutCallback(group_size=4, groups_per_rollout=2, sampling=SamplingConfig(max_new_tokens=6))
    data = StepGRPODataModule(str(path), groups_per_batch=2)
    make_trainer(2, [rollout], logger=logger, log_every_n_steps=1).fit(make_module(str(tiny_vl_path)), datamodule=data)
    assert data.read_report.rows_skipped == 2 and data.read_report.rows_read == 2
    rows = _metrics(tmp_path / "logs")
    assert float(next(r["data/skipped_rows"] for r in rows if r.get("data/skipped_rows"))) == 2.0
    failure_rates = [float(r["parse_failure_rate"]) for r in rows if r.get("parse_failure_rate")]
    assert failure_rates and max(failure_rates) == 1.0, "random output does not parse: reward 0, counted"
    assert all(float(r["reward/mean"]) == 0.0 for r in rows if r.get("reward/mean"))


def _resume_config(tmp_path: Path) -> Path:
    """The tiny fit config, checkpointing every step; a phase has two micro-batches, so step 1 ends mid-phase."""
    config = yaml.safe_load(TINY_FIT.read_text())
    config["data"].update(trajectories=str(TINY_TRAJECTORIES), groups_per_batch=1)
    config["model"]["policy"]["lora"]["dropout"] = 0.1  # so the torch RNG state matters too
    config["model"]["rollout"]["init_args"].update(groups_per_rollout=2, demonstrations=1)  # non-zero advantages
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"].update(every_n_train_steps=1, save_top_k=-1, filename="step{step}")
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _losses(log_dir: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["loss/policy"]) for r in _metrics(log_dir) if r.get("loss/policy")}


def test_resuming_from_a_checkpoint_gives_the_losses_of_an_uninterrupted_run(run_cli, tmp_path):
    config = _resume_config(tmp_path)
    (tmp_path / "whole").mkdir()
    whole = run_cli("fit", "--config", str(config), "--trainer.max_steps", "4", cwd=tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    checkpoint = tmp_path / "whole" / "checkpoints" / "tiny" / "step1.ckpt"
    saved = torch.load(checkpoint, weights_only=True)  # plain tensors and numbers only
    assert saved["state_dict"] and all("lora_" in k for k in saved["state_dict"])
    (tmp_path / "resumed").mkdir()
    resumed = run_cli(
        "fit",
        "--config",
        str(config),
        "--trainer.max_steps",
        "4",
        "--ckpt_path",
        str(checkpoint),
        cwd=tmp_path / "resumed",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = _losses(tmp_path / "whole" / "lightning_logs"), _losses(tmp_path / "resumed" / "lightning_logs")
    print("policy losses", expected, got)
    assert len(set(expected.values())) == 4 and min(abs(v) for v in expected.values()) > 1e-3
    assert sorted(got) == [1, 2, 3] and sorted(expected) == [0, 1, 2, 3]
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-6), step


def test_a_corrupted_checkpoint_is_a_clear_error(run_cli, tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint at all")
    result = run_cli(
        "fit",
        "--config",
        str(TINY_FIT),
        "--trainer.max_steps",
        "2",
        "--data.trajectories",
        str(TINY_TRAJECTORIES),
        "--ckpt_path",
        str(broken),
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "broken.ckpt" in result.stderr and "not a readable checkpoint" in result.stderr


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_the_learning_rate_schedules_are_transformers_own(schedule):
    import math
    from types import SimpleNamespace

    module = MoRELightningModule(
        PolicyConfig(model="tiny:qwen2.5-vl", dtype="float32", lora=LoraSettings(r=4)),
        optimizer=OptimizerConfig(lr=1.0, warmup_steps=2, schedule=schedule),
    )
    module.configure_model()
    module._trainer = SimpleNamespace(max_steps=10)
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    progress = [(step - 2) / 8 for step in range(2, 10)]
    after = {
        "constant": [1.0] * 8,
        "linear": [1 - p for p in progress],
        "cosine": [0.5 * (1 + math.cos(math.pi * p)) for p in progress],
    }[schedule]
    assert rates == pytest.approx([0.0, 0.5, *after])
