"""``MoRELightningModule``: the quantised LoRA policy and the Step-GRPO loss, wired together (thin by design).

One training step, top to bottom (``training_step``):

1. ``_next_batch``: when the rollout buffer is used up, the rollout (``model.rollout``) runs a new phase with the
   current policy and returns its groups and statistics; the buffer cuts them into micro-batches. The phase runs
   inside the step, right before the update that uses it: a dataloader would sample it ahead, with the weights of
   the step before (Lightning prefetches one batch).
2. The log-probs (and entropies) of the micro-batch's completions under the policy (``policy/shared_prompt.py``).
3. ``StepGRPOLoss`` (``grpo/loss.py``), or the warm start's NLL (``train/sft.py``).
4. One ``log_dict`` of the step's metrics, reduced over ranks (``step_metrics.py``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

import lightning.pytorch as pl
import torch

from more_lightning.agent.episodes import UNPARSED_ROUTE, EpisodeConfig, EpisodeRunner
from more_lightning.agent.eval_reports import routing_accuracy
from more_lightning.data.buffer import GroupBatch, RolloutBuffer, TrainingGroup
from more_lightning.data.datamodule import StepGRPODataModule
from more_lightning.data.qa import QAExample
from more_lightning.errors import ConfigError, SettingError, check_ranges
from more_lightning.grpo.advantages import has_zero_std
from more_lightning.grpo.loss import (
    LossConfig,
    LossStats,
    StepGRPOLoss,
    engine_importance_weights,
    engine_logprob_gap,
)
from more_lightning.policy.generation import SamplingConfig, tokenizer_of
from more_lightning.policy.loading import PolicyConfig, load_policy
from more_lightning.policy.sampler import PolicySampler
from more_lightning.policy.shared_prompt import group_token_stats
from more_lightning.policy.token_stats import DEFAULT_CHUNK_TOKENS
from more_lightning.rewards.metric import F1Recall
from more_lightning.train.atomic_checkpoint import use_atomic_saves
from more_lightning.train.rollout import RolloutCallback, engine_old_logprobs_problem
from more_lightning.train.rollout_phase import Policy, Rollout, RolloutPhase
from more_lightning.train.sft import TeacherDemonstrations, objective_problem, supervised_nll
from more_lightning.train.step_metrics import StepClock, StepMetrics, with_throughput
from more_lightning.train.strategies import shard_policy

FSDP_PREFIX = "_fsdp_wrapped_module."


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
        rollout: what makes the training groups: a ``RolloutCallback`` (Step-GRPO) or ``TeacherDemonstrations``
            (the warm start); the training step calls its ``run`` with the current policy whenever its buffer is
            used up, and it is added to the trainer's callbacks (its engine's lifetime, its random state in
            checkpoints). Configured here, its settings are single CLI overrides and sweep parameters
            (``--model.rollout.group_size 8``); a list entry in ``trainer.callbacks`` works too but cannot be
            overridden field by field.
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
        self.loss_fn = StepGRPOLoss(loss)
        self.model = None
        self.processor = None
        self.val_f1_recall: F1Recall | None = None
        self.buffer: RolloutBuffer | None = None
        """The current rollout phase and its micro-batches still to come (made at fit set-up, saved in checkpoints)."""
        self._rollout: Rollout | None = None
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
            self._rollout = self._find_rollout()
            self._check_objective()
            data = self.trainer.datamodule
            if not isinstance(data, StepGRPODataModule):
                raise SettingError("training needs a StepGRPODataModule (trainer.fit(model, datamodule=...))")
            self.buffer = RolloutBuffer(data.groups_per_batch, data.ppo_epochs, data.seed)

    def _find_rollout(self) -> Rollout:
        """``model.rollout``, or else the rollout among ``trainer.callbacks``."""
        kinds = (RolloutCallback, TeacherDemonstrations)
        found = self.rollout or next((c for c in self.trainer.callbacks if isinstance(c, kinds)), None)
        if found is None:
            raise SettingError(
                "nothing makes the training groups: set model.rollout (more_lightning.train.rollout.RolloutCallback, "
                "or more_lightning.train.sft.TeacherDemonstrations for the warm start)"
            )
        return found

    def configure_model(self) -> None:
        if self.model is None:
            self.model, self.processor = load_policy(self.policy_config)
            self.model.train()
            if self.device_mesh is not None:  # Lightning's ModelParallelStrategy: FSDP2 over its data-parallel mesh
                shard_policy(self.model, self.device_mesh["data_parallel"])

    def _check_objective(self) -> None:
        if problem := objective_problem(self.loss_config.objective, type(self._rollout)):
            raise ConfigError([problem])
        if problem := engine_old_logprobs_problem(self.loss_config.old_logprobs, self._rollout):
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
        if self.buffer is not None:
            checkpoint["rollout_buffer"] = self.buffer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved, expected = set(checkpoint.get("state_dict", {})), self._trainable_keys()
        if saved != expected:
            raise SettingError(
                "this checkpoint's adapter does not match the configured policy "
                f"({len(saved - expected)} unexpected, {len(expected - saved)} missing weights, e.g. "
                f"{sorted(saved ^ expected)[:3]}): load it with the model.policy and LoRA settings it was trained with"
            )
        if self.buffer is not None and "rollout_buffer" in checkpoint:
            self.buffer.load_state_dict(checkpoint["rollout_buffer"])

    # -- training ------------------------------------------------------------------------------------------------
    def _next_batch(self) -> tuple[GroupBatch, StepMetrics]:
        """The next micro-batch of the current rollout phase, and the statistics of the phase run for it (none when
        it reuses a phase). When the buffer is used up the rollout runs a new phase here, with this step's weights."""
        if not self.buffer.empty:
            return self.buffer.next_batch(), StepMetrics()
        accumulate = self.trainer.accumulate_grad_batches
        policy = Policy(self.model, self.processor, self.global_step, self.shared_prompt, self.logits_chunk_tokens)
        reference = self.loss_config.objective == "step_grpo" and self.loss_config.beta > 0
        recompute_old = self.loss_config.old_logprobs == "trainer"
        phase = self._rollout.run(
            policy, self.trainer.datamodule, self.buffer.phases, accumulate, reference, recompute_old
        )
        self.buffer.fill(phase.groups, accumulate)
        supervised = self.loss_config.objective == "sft"
        return self.buffer.next_batch(), StepMetrics() if supervised else self._rollout_metrics(phase)

    def _rollout_metrics(self, phase: RolloutPhase) -> StepMetrics:
        """A rollout phase's statistics (logged with the step that ran it); its timings go to the step clock."""
        groups, stats = phase.groups, phase.stats
        metrics = StepMetrics()
        if stats.routing_samples is not None and stats.routing_samples[1]:
            correct, total = stats.routing_samples
            metrics.mean("rollout/routing_accuracy", 100.0 * correct / total, total)
        self._clock.add_rollout(stats.timings, sum(g.generated_tokens for g in groups))
        metrics.mean("rollout/groups_dropped", stats.dropped)
        samples = sum(g.size for g in groups)
        metrics.mean("rollout/parse_failure_rate", sum(g.parse_failures for g in groups) / max(samples, 1), samples)
        zero_std = sum(has_zero_std(g.rewards) for g in groups) / max(len(groups), 1)
        metrics.mean("rollout/frac_reward_zero_std", zero_std, len(groups))
        routing = [g for g in groups if g.step_type == "ret"]
        chosen = Counter(", ".join(e) if e else UNPARSED_ROUTE for g in routing for e in g.experts)
        total = sum(chosen.values())
        if total:
            self._experts_seen.update(chosen)  # an expert not chosen this time logs 0, not its last share
            for expert in self._experts_seen:
                metrics.mean(f"experts/{expert}", chosen[expert] / total, total)
        return metrics

    def _stack(self, groups: list[TrainingGroup], attribute: str, width: int) -> torch.Tensor | None:
        tensors = [getattr(g, attribute) for g in groups]
        if any(t is None for t in tensors):
            return None
        rows = [row for t in tensors for row in t]
        out = torch.zeros((len(rows), width))
        for i, row in enumerate(rows):
            out[i, : min(width, len(row))] = row[:width]
        return out.to(self.device)

    def training_step(self, batch_index: int, batch_idx: int) -> torch.Tensor:
        """One micro-batch (``batch_index`` only counts them: the batch comes from :meth:`_next_batch`)."""
        self._clock.start()
        batch, metrics = self._next_batch()  # may run a rollout phase
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
        trainer_old = self._stack(groups, "old_logprobs", width)
        if trainer_old is None:  # a phase of one optimizer step (π_old is π), or π_old from the engine
            trainer_old = logprobs.detach()
        engine = self._stack(groups, "engine_logprobs", width)
        old = trainer_old
        if self.loss_config.old_logprobs == "engine":
            old = torch.where(torch.isfinite(engine), engine, trainer_old)  # NaN: past a completion's end
        weights = None
        if engine is not None:
            metrics.mean("rollout/engine_logprob_gap", engine_logprob_gap(trainer_old, engine, mask))
            if self.loss_config.engine_is_cap is not None:
                weights = engine_importance_weights(old, engine, self.loss_config.engine_is_cap)
        step_tokens = None
        if self.loss_config.aggregation == "dapo":  # Lightning divides each micro-batch loss by the accumulation
            step_tokens = batch.step_tokens / self.trainer.accumulate_grad_batches
        loss, stats = self.loss_fn(
            logprobs=logprobs,
            old_logprobs=old,
            advantages=torch.cat([g.advantages for g in groups]).to(self.device),
            mask=mask,
            ref_logprobs=self._stack(groups, "ref_logprobs", width),
            entropy=entropy,
            token_weights=weights,
            step_tokens=step_tokens,
        )
        self._log_step(groups, mask, loss, stats, metrics)
        return loss

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

    def _supervised_loss(self, groups: list[TrainingGroup], logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The warm start: mean negative log-likelihood over every completion token of the micro-batch."""
        loss = supervised_nll(logprobs, mask)
        stats = StepMetrics()
        stats.mean("loss", loss.detach())
        stats.mean("loss/nll", loss.detach())
        stats.mean("completion_length", mask.sum() / max(len(groups), 1), len(groups))
        metrics = stats.reduce()
        self.log_dict({k: torch.tensor(v) for k, v in metrics.items()}, on_step=True, batch_size=len(groups))
        self.log("nll", metrics["loss/nll"], prog_bar=True, logger=False, on_step=True, batch_size=len(groups))
        return loss

    def _log_step(
        self, groups: list[TrainingGroup], mask: torch.Tensor, loss: torch.Tensor, terms: LossStats, stats: StepMetrics
    ) -> None:
        """Log the micro-batch's loss terms, rewards and ``stats`` (the rollout's, when a phase ran for it): means
        over every sample of every rank (``step_metrics.py``)."""
        size = sum(g.size for g in groups)
        terms_logged = {"loss": loss, "loss/policy": terms.policy, "kl": terms.kl, "entropy": terms.entropy}
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
