"""``MoRELightningModule``: the quantised LoRA policy and the Step-GRPO loss, wired together (thin by design).

The rollout (``rollout.py``) fills the data module's buffer; ``training_step`` pulls the next micro-batch of groups
itself (``dataloader_iter``), so a rollout phase runs right before the update that uses it — Lightning's one-batch
prefetch would otherwise sample with a policy one step stale. The math is in ``grpo/``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import lightning.pytorch as pl
import torch

from more_lightning.agent.episodes import UNPARSED_ROUTE, EpisodeConfig, EpisodeRunner
from more_lightning.agent.evaluation import routing_accuracy
from more_lightning.data.buffer import Group, GroupBatch
from more_lightning.data.qa import QAExample
from more_lightning.errors import ConfigError, SettingError, check_ranges
from more_lightning.grpo.advantages import has_zero_std
from more_lightning.grpo.loss import Aggregation, engine_importance_weights, engine_logprob_gap, step_grpo_loss
from more_lightning.policy.generation import SamplingConfig, tokenizer_of
from more_lightning.policy.loading import PolicyConfig, load_policy
from more_lightning.policy.sampler import PolicySampler
from more_lightning.policy.shared_prompt import group_token_stats
from more_lightning.policy.token_stats import DEFAULT_CHUNK_TOKENS
from more_lightning.rewards.metric import F1Recall
from more_lightning.train.atomic_checkpoint import use_atomic_saves
from more_lightning.train.sft import objective_problem, supervised_nll
from more_lightning.train.step_metrics import StepClock, StepMetrics, with_throughput
from more_lightning.train.strategies import shard_policy

FSDP_PREFIX = "_fsdp_wrapped_module."


@dataclass
class LossConfig:
    """The training objective: Step-GRPO, or the supervised warm start before it."""

    objective: Literal["step_grpo", "sft"] = "step_grpo"
    """``step_grpo``: the clipped surrogate over sampled groups (with a ``RolloutCallback``); ``sft``: the mean
    negative log-likelihood of the teacher's completion tokens (the warm start, with ``TeacherDemonstrations``)."""
    beta: float = 1e-3
    """KL coefficient to the reference (adapter disabled). Applied when > 0; the official code computes it but does
    not add it (set 0 to reproduce that)."""
    clip_low: float = 0.2
    """PPO clip ε below 1 (ratio ≥ 1 − ε_low)."""
    clip_high: float = 0.2
    """PPO clip ε above 1 (ratio ≤ 1 + ε_high; DAPO's clip-higher uses 0.28)."""
    entropy_coef: float = 1e-3
    """Entropy bonus coefficient (official: 1e-3)."""
    aggregation: Aggregation = "token_mean"
    """``token_mean`` (official), ``seq_mean`` (GRPO paper) or ``dapo`` (global token mean over the optimizer step)."""
    engine_is_cap: float | None = None
    """Truncated importance sampling for rollouts sampled by the vLLM engine: each token's policy term is weighted by
    ``min(π_old / π_engine, cap)`` (TRL's ``vllm_importance_sampling_cap``; 2.0 is usual). ``None``: off (the
    official code samples and trains with the same weights)."""

    def __post_init__(self) -> None:
        check_ranges(
            "model.loss",
            {
                "beta": (self.beta, self.beta >= 0, ">= 0"),
                "clip_low": (self.clip_low, 0 <= self.clip_low < 1, "in [0, 1)"),
                "clip_high": (self.clip_high, self.clip_high >= 0, ">= 0"),
                "entropy_coef": (self.entropy_coef, self.entropy_coef >= 0, ">= 0"),
            },
        )


@dataclass
class OptimizerConfig:
    """Optimizer and learning-rate schedule (gradient clipping and accumulation are Trainer settings)."""

    name: Literal["adamw", "paged_adamw_8bit"] = "adamw"
    """``adamw`` (torch) or ``paged_adamw_8bit`` (bitsandbytes, for QLoRA on one GPU)."""
    lr: float = 1e-5
    """Peak learning rate (LoRA usually 1e-5 to 1e-4)."""
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    """Linear warm-up from 0 to ``lr``."""
    schedule: Literal["constant", "cosine", "linear", "cosine_with_restarts", "polynomial", "inverse_sqrt"] = "constant"
    """After warm-up: ``constant``, or a decay to 0 at ``trainer.max_steps`` (``transformers.get_scheduler``)."""
    cycles: int = 1
    """Hard restarts of ``cosine_with_restarts``."""

    def __post_init__(self) -> None:
        check_ranges(
            "model.optimizer",
            {
                "lr": (self.lr, self.lr > 0, "> 0"),
                "weight_decay": (self.weight_decay, self.weight_decay >= 0, ">= 0"),
                "betas": (self.betas, all(0 <= b < 1 for b in self.betas), "two values in [0, 1)"),
                "warmup_steps": (self.warmup_steps, self.warmup_steps >= 0, ">= 0"),
                "cycles": (self.cycles, self.cycles >= 1, ">= 1"),
            },
        )


class MoRELightningModule(pl.LightningModule):
    """The policy MLLM (quantised base + LoRA) trained with the Step-GRPO loss.

    Args:
        policy: which model, quantisation and adapter.
        loss: the Step-GRPO objective.
        optimizer: optimizer and schedule.
        val_sampling: decoding of validation episodes (greedy by default).
        val_episode: step limit and retrieval depth of validation episodes.
        rollout: the rollout callback (a ``RolloutCallback``), added to the trainer's callbacks. Configured here,
            its settings are single CLI overrides and sweep parameters (``--model.rollout.group_size 8``); a list
            entry in ``trainer.callbacks`` works too but cannot be overridden field by field.
        shared_prompt: encode each group's prompt once in the training forward/backward and the old/reference
            log-prob passes (one packed row per group with a shared-prefix mask, ``policy/shared_prompt.py``), and
            prefill it once in generation. Exact (tested against the plain path); ``false`` is the plain path, which
            encodes the prompt once per completion.
        logits_chunk_tokens: completion tokens whose logits exist at once in the training forward and the
            old/reference log-prob passes (``policy/token_stats.py``): the full ``(samples, C, vocab)`` fp32 logits
            are never built (8 × 5 samples × 256 tokens × 152k vocab would be 5.8 GiB). Exact for any value; a
            larger one runs fewer, larger ``lm_head`` matmuls.
    """

    def __init__(
        self,
        policy: PolicyConfig = PolicyConfig(),
        loss: LossConfig = LossConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),
        val_sampling: SamplingConfig = SamplingConfig(greedy=True, max_new_tokens=128),
        val_episode: EpisodeConfig = EpisodeConfig(),
        rollout: pl.Callback | None = None,
        shared_prompt: bool = True,
        logits_chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    ) -> None:
        super().__init__()
        check_ranges("model", {"logits_chunk_tokens": (logits_chunk_tokens, logits_chunk_tokens >= 1, ">= 1")})
        self.shared_prompt = shared_prompt
        self.logits_chunk_tokens = logits_chunk_tokens
        self.policy_config = policy
        self.loss_config = loss
        self.optimizer_config = optimizer
        self.val_sampling = val_sampling
        self.val_episode = val_episode
        self.rollout = rollout
        self.save_hyperparameters(ignore=["rollout"])
        self.model = None
        self.processor = None
        self.val_f1_recall: F1Recall | None = None
        self._pending_rollout: StepMetrics | None = None
        self._experts_seen: set[str] = set()
        self._clock = StepClock()
        self._update_began = 0.0
        self._stepped = False
        self.strict_loading = False  # checkpoints hold the adapter only; on_load_checkpoint checks its keys

    def setup(self, stage: str) -> None:
        use_atomic_saves(self.trainer)  # a failed save never truncates the last good checkpoint
        names = getattr(self.trainer.datamodule, "val_dataset_names", [])
        if names and self.val_f1_recall is None:
            self.val_f1_recall = F1Recall(datasets=names)
        if stage == "fit":
            self._check_objective()

    def configure_model(self) -> None:
        if self.model is None:
            self.model, self.processor = load_policy(self.policy_config)
            self.model.train()
            self._limit_prompt_length()
            if self.device_mesh is not None:  # Lightning's ModelParallelStrategy: FSDP2 over its data-parallel mesh
                shard_policy(self.model, self.device_mesh["data_parallel"])

    def _limit_prompt_length(self) -> None:
        """Drop training rows whose prompt cannot fit the policy's context with its longest completion."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if not hasattr(datamodule, "drop_long_prompts"):
            return
        config = self.model.config
        context = getattr(getattr(config, "text_config", None) or config, "max_position_embeddings", None) or 32768
        longest = self.rollout.sampling.max_new_tokens if hasattr(self.rollout, "sampling") else 0
        datamodule.drop_long_prompts(tokenizer_of(self.processor), max(context - longest, 1))

    def _check_objective(self) -> None:
        if problem := objective_problem(self.loss_config.objective, type(self.rollout)):
            raise ConfigError([problem])

    def configure_callbacks(self) -> list[pl.Callback]:
        return [self.rollout] if self.rollout is not None else []

    def on_fit_start(self) -> None:
        if self.device_mesh is not None:
            # FSDP2 initialises at the first forward through its root; generate may first call the vision tower or
            # the embeddings on their own, so run one token through the root on every rank before any rollout
            token = torch.tensor([[tokenizer_of(self.processor).pad_token_id]], device=self.device)
            with torch.no_grad():
                self.model(input_ids=token, use_cache=False)

    # -- checkpoints: the adapter only ---------------------------------------------------------------------------
    def _trainable_keys(self) -> set[str]:
        names = (name for name, p in self.model.named_parameters() if p.requires_grad)
        return {"model." + name.replace(FSDP_PREFIX, "") for name in names}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the trainable (LoRA) weights only: the frozen base is rebuilt from ``policy`` when loading."""
        keep = self._trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved, expected = set(checkpoint.get("state_dict", {})), self._trainable_keys()
        if saved != expected:
            raise SettingError(
                "this checkpoint's adapter does not match the configured policy "
                f"({len(saved - expected)} unexpected, {len(expected - saved)} missing weights, e.g. "
                f"{sorted(saved ^ expected)[:3]}): load it with the model.policy and LoRA settings it was trained with"
            )

    # -- rollout statistics --------------------------------------------------------------------------------------
    def record_rollout(
        self,
        groups: list[Group],
        timings: dict[str, float],
        dropped: int = 0,
        routing_samples: tuple[int, int] | None = None,
    ) -> None:
        """Called by the rollout callback; logged with the next training step. ``routing_samples``: (samples that
        chose the gold expert, samples) at the first routing step of episodes that name one."""
        stats = StepMetrics()
        if routing_samples is not None and routing_samples[1]:
            correct, total = routing_samples
            stats.mean("rollout/routing_accuracy", 100.0 * correct / total, total)
        self._clock.add_rollout(timings, sum(g.generated_tokens for g in groups))
        stats.mean("rollout/groups_dropped", dropped)
        samples = sum(g.size for g in groups)
        stats.mean("rollout/parse_failure_rate", sum(g.parse_failures for g in groups) / max(samples, 1), samples)
        zero_std = sum(has_zero_std(g.rewards) for g in groups) / max(len(groups), 1)
        stats.mean("rollout/frac_reward_zero_std", zero_std, len(groups))
        routing = [g for g in groups if g.step_type == "ret"]
        chosen = Counter(", ".join(e) if e else UNPARSED_ROUTE for g in routing for e in g.experts)
        total = sum(chosen.values())
        if total:
            self._experts_seen.update(chosen)  # an expert not chosen this time logs 0, not its last share
            for expert in self._experts_seen:
                stats.mean(f"experts/{expert}", chosen[expert] / total, total)
        self._pending_rollout = stats

    # -- training ------------------------------------------------------------------------------------------------
    @staticmethod
    def _next_batch(dataloader_iter: Iterator) -> GroupBatch:
        item = next(dataloader_iter)
        return item[0] if isinstance(item, tuple) else item

    def _stack(self, groups: list[Group], attribute: str, width: int) -> torch.Tensor | None:
        tensors = [getattr(g, attribute) for g in groups]
        if any(t is None for t in tensors):
            return None
        rows = [row for t in tensors for row in t]
        out = torch.zeros((len(rows), width))
        for i, row in enumerate(rows):
            out[i, : min(width, len(row))] = row[:width]
        return out.to(self.device)

    def training_step(self, dataloader_iter: Iterator) -> torch.Tensor:
        self._clock.start()
        batch = self._next_batch(dataloader_iter)  # may run a rollout phase (timed by the rollout callback)
        self._update_began = self._clock.now()
        groups = batch.groups
        pad = tokenizer_of(self.processor).pad_token_id
        prompts, completions = [g.prompt_inputs for g in groups], [g.completions for g in groups]
        supervised = self.loss_config.objective == "sft"
        shared = self.shared_prompt and not supervised  # one completion per prompt: nothing to share
        logprobs, entropy, mask = group_token_stats(
            self.model,
            prompts,
            completions,
            pad,
            shared,
            with_entropy=not supervised,
            chunk_tokens=self.logits_chunk_tokens,
        )
        mask = mask.to(self.device)
        if supervised:
            return self._supervised_loss(groups, logprobs, mask)
        width = mask.shape[1]
        old = self._stack(groups, "old_logprobs", width)
        reference = self._stack(groups, "ref_logprobs", width)
        advantages = torch.cat([g.advantages for g in groups]).to(self.device)
        config = self.loss_config
        step_tokens = None
        if config.aggregation == "dapo":  # Lightning divides each micro-batch loss by the accumulation count
            step_tokens = batch.step_tokens / self.trainer.accumulate_grad_batches
        old = old if old is not None else logprobs.detach()
        engine = self._stack(groups, "engine_logprobs", width)
        weights, engine_stats = None, StepMetrics()
        if engine is not None:
            engine_stats.mean("rollout/engine_logprob_gap", engine_logprob_gap(old, engine, mask))
            if config.engine_is_cap is not None:
                weights = engine_importance_weights(old, engine, config.engine_is_cap)
        terms = step_grpo_loss(
            logprobs,
            old,
            advantages,
            mask,
            reference,
            entropy,
            config.beta,
            config.entropy_coef,
            config.clip_low,
            config.clip_high,
            config.aggregation,
            step_tokens,
            weights,
        )
        self._log_step(groups, mask, terms, engine_stats)
        return terms.loss

    def on_after_backward(self) -> None:
        self._clock.add("update", self._clock.now() - self._update_began)

    def on_before_optimizer_step(self, optimizer) -> None:
        self._stepped = True  # this micro-batch ends an optimizer step (Lightning skips the hook while accumulating)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Log the step's times and memory (``StepClock``) once the optimizer step is done."""
        if not self._stepped:
            return
        self._stepped = False
        metrics = with_throughput(self._clock.finish().reduce())
        self.log_dict({k: torch.tensor(v) for k, v in metrics.items()}, on_step=True, batch_size=1)

    def _supervised_loss(self, groups: list[Group], logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The warm start: mean negative log-likelihood over every completion token of the micro-batch."""
        loss = supervised_nll(logprobs, mask)
        stats = StepMetrics()
        stats.mean("loss", loss.detach())
        stats.mean("loss/nll", loss.detach())
        stats.mean("completion_length", mask.sum() / max(len(groups), 1), len(groups))
        metrics = stats.reduce()
        self.log_dict({k: torch.tensor(v) for k, v in metrics.items()}, on_step=True, batch_size=len(groups))
        self.log("nll", metrics["loss/nll"], prog_bar=True, logger=False, on_step=True, batch_size=len(groups))
        self._pending_rollout = None
        return loss

    def _log_step(self, groups: list[Group], mask: torch.Tensor, terms, stats: StepMetrics) -> None:
        size = sum(g.size for g in groups)  # stats: means over every sample of every rank (see step_metrics.py)
        terms_logged = {"loss": terms.loss, "loss/policy": terms.policy, "kl": terms.kl, "entropy": terms.entropy}
        terms_logged["clip_ratio"] = terms.clip_ratio
        for name, value in terms_logged.items():
            stats.mean(name, value)
        stats.mean("completion_length", mask.sum() / max(size, 1), size)
        stats.mean("frac_reward_zero_std", sum(has_zero_std(g.rewards) for g in groups) / len(groups), len(groups))
        stats.mean("parse_failure_rate", sum(g.parse_failures for g in groups) / max(size, 1), size)
        for step_type in ("ret", "ans"):
            rewards = [g.rewards for g in groups if g.step_type == step_type]
            if rewards:
                stats.spread(f"reward/{step_type}", torch.cat(rewards))
        stats.spread("reward", torch.cat([g.rewards for g in groups]))
        if self._pending_rollout is not None:
            stats.merge(self._pending_rollout)
            self._pending_rollout = None
        report = getattr(self.trainer.datamodule, "read_report", None)
        if self.global_step == 0 and report is not None:
            stats.mean("data/skipped_rows", report.rows_skipped)
        metrics = stats.reduce()
        self.log_dict({k: torch.tensor(v) for k, v in metrics.items()}, on_step=True, batch_size=size)
        self.log("reward", metrics["reward/mean"], prog_bar=True, on_step=True, batch_size=size)
        self._show_expert_usage(metrics)

    def _show_expert_usage(self, metrics: dict[str, float]) -> None:
        """The progress bar shows which experts the latest rollout routed to (share of routing samples)."""
        usage = {
            name.removeprefix("experts/").removesuffix(" retriever"): value
            for name, value in metrics.items()
            if name.startswith("experts/")
        }
        if usage:
            bar = {f"→{name}": torch.as_tensor(share, dtype=torch.float32) for name, share in usage.items()}
            self.log_dict(bar, prog_bar=True, logger=False, on_step=True, batch_size=1)

    # -- validation: live episodes on held-out questions ---------------------------------------------------------
    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        if isinstance(batch, list) and batch and isinstance(batch[0], QAExample):
            return batch  # questions, not tensors: the episode runner moves what it encodes
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def validation_step(self, batch: list[QAExample], batch_idx: int) -> None:
        datamodule = self.trainer.datamodule
        if datamodule.experts is None:
            raise SettingError("validation episodes need experts: set data.experts in the config")
        sampler = PolicySampler(self.model, self.processor, self.val_sampling, len(batch), seed=batch_idx)
        traces = EpisodeRunner(sampler, datamodule.experts, self.val_episode).run([e.to_episode() for e in batch])
        self.val_f1_recall.update(
            [t.final_answer for t in traces], [list(e.golds) for e in batch], [e.dataset for e in batch]
        )
        accuracy, routed, _ = routing_accuracy(traces)
        if routed:  # weighted by the questions that name a gold expert: the epoch value is the exact share
            self.log("val/routing_accuracy", accuracy, on_epoch=True, batch_size=routed, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.val_f1_recall is None:
            return
        scores = self.val_f1_recall.compute()
        self.log("val/f1_recall", scores["all"], prog_bar=True)
        for name, value in scores.items():
            if name != "all":
                self.log(f"val/f1_recall/{name}", value)
        self.val_f1_recall.reset()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning's FSDP precision cannot clip by norm; FSDP's own ``clip_grad_norm_`` does, across shards."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = self.trainer.strategy.model
        if gradient_clip_val and isinstance(wrapped, FullyShardedDataParallel) and gradient_clip_algorithm != "value":
            wrapped.clip_grad_norm_(gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- optimisation --------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        config = self.optimizer_config
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        if not parameters:
            raise SettingError("the policy has no trainable parameters (set policy.lora)")
        if config.name == "paged_adamw_8bit":
            import bitsandbytes as bnb

            optimizer = bnb.optim.PagedAdamW8bit(
                parameters, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
            )
        else:
            optimizer = torch.optim.AdamW(  # foreach: one kernel per step for the many small LoRA tensors, CPU too
                parameters, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, foreach=True
            )
        from transformers import get_scheduler

        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else None
        if config.schedule not in ("constant", "inverse_sqrt") and total is None:
            raise SettingError(f"schedule {config.schedule!r} needs trainer.max_steps")
        name = "constant_with_warmup" if config.schedule == "constant" else config.schedule
        scheduler = get_scheduler(
            name,
            optimizer,
            num_warmup_steps=config.warmup_steps,
            num_training_steps=total,
            scheduler_specific_kwargs={"num_cycles": config.cycles}
            if config.schedule == "cosine_with_restarts"
            else None,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
