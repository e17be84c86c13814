"""``RolloutCallback``: the rollout phase of Step-GRPO, run whenever the training stream needs new groups.

- ``teacher_forced`` (official Step-GRPO): take the next teacher steps from the data module; for each, sample ``n``
  completions of the step prompt (one GROUP) and score them with the step rewards against the teacher's gold.
- ``on_policy`` (beyond the official code): run the next episodes live (``episodes.py``): at every step of every
  episode, sample ``n`` outputs of the *current* state (a group), score them (``rewards/on_policy.py``), search the
  experts for real, and continue with one of them (``continue_with``).

Both give groups with advantages; then — when the loss needs them — the old log-probs (several optimizer steps per
phase) and the reference log-probs (``beta > 0``, adapter disabled). The policy is in eval mode with no grad during the
phase. The training step calls :meth:`RolloutCallback.run` with the current policy when its buffer is empty and gets
the groups and their statistics back (``rollout_phase.py``); it logs them with the step.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections import Counter
from dataclasses import asdict, is_dataclass
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from more_lightning.agent.episodes import ContinueWith, EpisodeConfig, EpisodeRunner, chosen_experts
from more_lightning.data.buffer import TrainingGroup
from more_lightning.data.datamodule import StepGRPODataModule
from more_lightning.data.trajectories import TeacherStep, teacher_demonstration
from more_lightning.engines.config import EngineConfig
from more_lightning.errors import SettingError, check_ranges
from more_lightning.grpo.advantages import has_zero_std
from more_lightning.policy.generation import SamplingConfig, tokenizer_of
from more_lightning.policy.sampler import PolicySampler, Sampler
from more_lightning.policy.shared_prompt import group_token_stats
from more_lightning.rewards.on_policy import OnPolicyRewarder, RewardWeights
from more_lightning.rewards.scoring import MoREStepScorer, StepScorer
from more_lightning.train.rollout_phase import Policy, RolloutPhase, RolloutStats
from more_lightning.train.strategies import gathered_root


def first_step_routing(traces) -> tuple[int, int]:
    """(samples choosing the gold expert, samples) over the first routing group of each episode naming its gold
    expert: the rollout's routing accuracy, logged as ``rollout/routing_accuracy``."""
    correct = total = 0
    for trace in traces:
        gold = trace.episode.gold_expert
        first = next((g for g in trace.groups if g.group.prompt.step_type == "ret"), None)
        if gold and first is not None:
            correct += sum(experts == (gold,) for experts in first.experts)
            total += len(first.experts)
    return correct, total


ROLLOUT_SETTINGS = ("group_size", "groups_per_rollout", "mode", "episodes_per_rollout", "demonstrations", "seed")
"""The rollout's arguments that decide what is sampled (with ``sampling``): saved in its state, compared on resume."""


def engine_old_logprobs_problem(source: str, rollout) -> tuple[str, str, str] | None:
    """The ``(field, value, expected)`` problem when ``model.loss.old_logprobs: engine`` has no engine log-probs to
    take: a rollout that does not sample with vLLM, or teacher demonstrations (which the engine did not sample)."""
    if source != "engine":
        return None
    if isinstance(rollout, RolloutCallback) and rollout.engine.kind == "vllm" and not rollout.demonstrations:
        return None
    return (
        "model.loss.old_logprobs",
        source,
        "trainer: the engine's log-probs come from model.rollout.engine.kind vllm without demonstrations "
        "(model.rollout.demonstrations 0)",
    )


class RolloutCallback(pl.Callback):
    """Runs the rollout phases of Step-GRPO (:meth:`run`); a callback for its engine's lifetime and its random state.

    Args:
        group_size: completions sampled per step prompt (the GRPO group size ``n``).
        groups_per_rollout: step prompts per rollout phase.
        prompts_per_generate: step prompts sampled together in one ``generate`` call.
        logprob_groups: groups per forward pass of the old and reference log-prob passes; ``None``: the training
            micro-batch (``data.groups_per_batch``), which fits wherever the update (with gradients) does.
        sampling: temperature, top-p, top-k, max new tokens.
        scorer: the teacher-forced reward source (default: the official MoRE step rewards).
        mode: ``teacher_forced`` (official: teacher histories, no retrieval in the loop) or ``on_policy`` (live
            episodes against the data module's experts).
        episodes_per_rollout: on-policy: episodes run per rollout phase.
        episode: on-policy: step limit, retrieval depth.
        continue_with: on-policy: ``teacher`` (where the episode has a teacher step), ``best`` or ``sample``.
        reward_weights: on-policy: weights of the ``reference``, ``retrieval`` and ``outcome`` rewards.
        demonstrations: teacher demonstrations per group, in place of samples (guided Step-GRPO; 0 = pure
            sampling, as the official code). A base model that never writes the protocol's tags gets only zero
            rewards, so nothing to learn from; one demonstration per group gives it the format and the teacher's
            decisions as the group's best sample. Teacher-forced: every group; on-policy: steps with a teacher
            (``continue_with: teacher``) and final answers.
        seed: sampling seed (phase ``i`` uses ``seed + i``).
        warn_no_signal_after: warn once when this many rollout phases in a row have no group with reward variance
            (every advantage 0: nothing is learnt); 0 never warns.
        engine: who samples: ``hf`` (``generate`` in this process) or ``vllm`` (a vLLM server that serves the
            policy's LoRA adapter, synced after every optimizer step; ``docs/operations.md``).
    """

    def __init__(
        self,
        group_size: int = 5,
        groups_per_rollout: int = 8,
        prompts_per_generate: int = 8,
        logprob_groups: int | None = None,
        sampling: SamplingConfig = SamplingConfig(),
        scorer: StepScorer | None = None,
        mode: Literal["teacher_forced", "on_policy"] = "teacher_forced",
        episodes_per_rollout: int = 2,
        episode: EpisodeConfig = EpisodeConfig(),
        continue_with: ContinueWith = "best",
        reward_weights: RewardWeights = RewardWeights(),
        demonstrations: int = 0,
        seed: int = 0,
        warn_no_signal_after: int = 5,
        engine: EngineConfig = EngineConfig(),
    ) -> None:
        check_ranges(
            "model.rollout",
            {
                "group_size": (group_size, group_size >= 2, ">= 2 (a group of one has no baseline)"),
                "groups_per_rollout": (groups_per_rollout, groups_per_rollout >= 1, ">= 1"),
                "prompts_per_generate": (prompts_per_generate, prompts_per_generate >= 1, ">= 1"),
                "episodes_per_rollout": (episodes_per_rollout, episodes_per_rollout >= 1, ">= 1"),
                "demonstrations": (
                    demonstrations,
                    0 <= demonstrations < group_size,
                    f"in [0, group_size={group_size})",
                ),
                "warn_no_signal_after": (warn_no_signal_after, warn_no_signal_after >= 0, ">= 0 (0 never warns)"),
            },
        )
        self.demonstrations = demonstrations
        self.group_size = group_size
        self.groups_per_rollout = groups_per_rollout
        self.prompts_per_generate = prompts_per_generate
        self.logprob_groups = logprob_groups
        self.sampling = sampling
        self.scorer = scorer or MoREStepScorer()
        self.mode = mode
        self.episodes_per_rollout = episodes_per_rollout
        self.episode = episode
        self.continue_with = continue_with
        self.reward_weights = reward_weights
        self.seed = seed
        self.warn_no_signal_after = warn_no_signal_after
        self.engine = engine
        self._engine = None
        self._phases_without_signal = 0
        self._trainer: pl.Trainer | None = None
        self._saved_rng: dict | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(trainer.datamodule, StepGRPODataModule):
            raise SettingError("RolloutCallback needs a StepGRPODataModule (trainer.fit(model, datamodule=...))")
        self._trainer = trainer
        if self.mode == "on_policy" and self._sharded():
            raise SettingError(
                "on_policy rollouts under a sharded strategy (FSDP) are not supported: ranks run different numbers "
                "of generate calls, and every sharded forward is a collective. Use DDP, or mode: teacher_forced."
            )
        if self.engine.kind == "vllm" and self._engine is None:
            from more_lightning.engines.launch import check_vllm_policy, open_vllm_engine

            check_vllm_policy(pl_module.policy_config, training=True, sharded=self._sharded())
            self._engine = open_vllm_engine(self.engine, pl_module.policy_config, training=True)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._engine is not None:  # a spawned server stays up for the process's next run and stops at exit
            self._engine.close()
            self._engine = None

    def _ranks(self) -> tuple[int, int]:
        """(world size, this rank); one process when run outside a trainer."""
        trainer = self._trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _sharded(self) -> bool:
        """Whether the weights are sharded across ranks (then every rank must run each generate step together)."""
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        trainer = self._trainer
        return (
            trainer is not None
            and trainer.world_size > 1
            and isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))
        )

    def state_dict(self) -> dict:
        """The random states (dropout, ``continue_with: sample``): with the data module's state, a resumed run
        samples and trains exactly as an uninterrupted one (rollout sampling itself is seeded per phase)."""
        version, internal, gauss = random.getstate()
        settings = {name: getattr(self, name) for name in ROLLOUT_SETTINGS}
        settings["sampling"] = asdict(self.sampling) if is_dataclass(self.sampling) else self.sampling
        return {
            "torch_rng": torch.get_rng_state(),
            "python_rng": [version, list(internal), gauss],
            "settings": settings,
        }

    def load_state_dict(self, state: dict) -> None:
        self._saved_rng = state  # applied at the first batch: Lightning draws from the RNG while it sets up the loop

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self._saved_rng is not None:
            torch.set_rng_state(self._saved_rng["torch_rng"])
            version, internal, gauss = self._saved_rng["python_rng"]
            random.setstate((version, tuple(internal), gauss))
            self._saved_rng = None

    # -- one rollout phase ---------------------------------------------------------------------------------------
    def run(
        self,
        policy: Policy,
        data: StepGRPODataModule,
        phase: int,
        accumulate: int = 1,
        reference: bool = False,
        recompute_old: bool = True,
    ) -> RolloutPhase:
        """Rollout phase number ``phase``: sample ``data``'s next steps (or episodes) with ``policy``, score them,
        and add the log-probs the loss needs: the old ones when the phase spans several optimizer steps
        (``accumulate`` micro-batches each) and ``recompute_old`` (else the loss takes the engine's), the reference
        ones when ``reference``."""
        model = policy.model
        was_training = model.training
        model.eval()
        began = time.perf_counter()
        try:
            with gathered_root(model):
                routing = None
                if self.mode == "on_policy":
                    groups, timings, routing = self._episode_groups(policy, data, phase)
                else:
                    groups, timings = self._sample_groups(policy, data.next_steps(self.groups_per_rollout), phase)
                groups, dropped = self._equalise(groups)
                logprob_began = time.perf_counter()
                if recompute_old and self._needs_old_logprobs(len(groups), data, accumulate):
                    for group, logprobs in zip(
                        groups, self._token_logprobs(policy, groups, False, data.groups_per_batch), strict=True
                    ):
                        group.old_logprobs = logprobs
                if reference:
                    for group, logprobs in zip(
                        groups, self._token_logprobs(policy, groups, True, data.groups_per_batch), strict=True
                    ):
                        group.ref_logprobs = logprobs
                timings["logprobs"] = time.perf_counter() - logprob_began
        finally:
            model.train(was_training)
        timings["total"] = time.perf_counter() - began
        self._watch_for_signal(groups)
        return RolloutPhase(groups, RolloutStats(timings, dropped, routing))

    @staticmethod
    def _needs_old_logprobs(groups: int, data: StepGRPODataModule, accumulate: int) -> bool:
        micro_batches = math.ceil(groups / data.groups_per_batch)
        steps_per_phase = math.ceil(micro_batches / accumulate)
        return data.ppo_epochs > 1 or steps_per_phase > 1

    @torch.no_grad()
    def _token_logprobs(
        self, policy: Policy, groups: list[TrainingGroup], reference: bool, groups_per_batch: int
    ) -> list[torch.Tensor]:
        """Per group, the ``(n, C)`` log-probs of its completions; ``logprob_groups`` (default: the training
        micro-batch's ``groups_per_batch``) groups per forward pass (one pass per group cost a fifth of the step in
        profiles of the tiny model; all at once, the memory peak)."""
        per_pass = self.logprob_groups or groups_per_batch
        model = policy.model
        pad = tokenizer_of(policy.processor).pad_token_id
        out = []
        for start in range(0, len(groups), per_pass):
            chunk = groups[start : start + per_pass]
            prompts, completions = [g.prompt_inputs for g in chunk], [g.completions for g in chunk]
            with model.disable_adapter() if reference else contextlib.nullcontext():
                logprobs, _, _ = group_token_stats(
                    model,
                    prompts,
                    completions,
                    pad,
                    policy.shared_prompt,
                    with_entropy=False,
                    chunk_tokens=policy.logits_chunk_tokens,
                )
            row = 0
            for group in chunk:
                width = max(len(c) for c in group.completions)
                out.append(logprobs[row : row + group.size, :width].cpu())
                row += group.size
        return out

    def _sample_groups(
        self, policy: Policy, steps: list[TeacherStep], phase: int
    ) -> tuple[list[TrainingGroup], dict[str, float]]:
        sampler = self._sampler(policy, phase)
        began = time.perf_counter()
        sampled = sampler.sample([s.prompt for s in steps], self.group_size)
        if self.demonstrations:
            for step, group in zip(steps, sampled, strict=True):
                sampler.demonstrate(group, teacher_demonstration(step), self.demonstrations)
        timings = {"generation": time.perf_counter() - began}
        began = time.perf_counter()
        groups: list[TrainingGroup] = []
        for step, group in zip(steps, sampled, strict=True):
            scored = self.scorer.score(step.step_type, step.gold, group.texts)
            rewards = [s.reward for s in scored]
            experts = [chosen_experts(s.parsed) for s in scored]
            groups.append(TrainingGroup.from_sample(group, rewards, sum(s.parse_failed for s in scored), experts))
        timings["scoring"] = time.perf_counter() - began
        return groups, timings

    def _sampler(self, policy: Policy, phase: int) -> Sampler:
        _, rank = self._ranks()
        seed = self.seed + phase * 100_003 + rank * 1_000_003
        if self._engine is not None:
            from more_lightning.engines.vllm_sampler import VLLMSampler

            self._engine.sync_policy(policy.model, version=policy.step)
            return VLLMSampler(self._engine, policy.processor, policy.model, self.sampling, seed=seed)
        return PolicySampler(
            policy.model,
            policy.processor,
            self.sampling,
            self.prompts_per_generate,
            seed=seed,
            synced=self._sharded(),
            shared_prefill=policy.shared_prompt,
        )

    def _equalise(self, groups: list[TrainingGroup]) -> tuple[list[TrainingGroup], int]:
        """Under several ranks, keep as many groups on each as the rank with the fewest has (on-policy episodes end
        at different steps): every rank must run the same number of micro-batches, or DDP waits forever. Groups
        with reward variance are kept first."""
        if self._ranks()[0] == 1:
            return groups, 0
        import torch.distributed as dist

        fewest = torch.tensor(len(groups))
        dist.all_reduce(fewest, op=dist.ReduceOp.MIN)
        kept = sorted(groups, key=lambda g: has_zero_std(g.rewards))[: int(fewest)]
        return kept, len(groups) - len(kept)

    def _episode_groups(
        self, policy: Policy, data: StepGRPODataModule, phase: int
    ) -> tuple[list[TrainingGroup], dict[str, float], tuple[int, int]]:
        if data.experts is None:
            raise SettingError("on_policy rollouts need experts: set data.experts (an ExpertPool) in the config")
        sampler = self._sampler(policy, phase)
        scorer = self.scorer if isinstance(self.scorer, MoREStepScorer) else MoREStepScorer()
        rewarder = OnPolicyRewarder(self.reward_weights, scorer)
        runner = EpisodeRunner(
            sampler,
            data.experts,
            self.episode,
            self.group_size,
            rewarder,
            self.continue_with,
            seed=self.seed + phase,
            demonstrations=self.demonstrations,
        )
        traces = runner.run(data.next_episodes(self.episodes_per_rollout))
        groups = []
        timings = Counter()
        for trace in traces:
            timings.update(trace.seconds)
            for scored in trace.groups:
                group = TrainingGroup.from_sample(
                    scored.group, scored.rewards, scored.parse_failures, scored.experts, trace.episode.id
                )
                groups.append(group)
        return groups, dict(timings), first_step_routing(traces)

    def _watch_for_signal(self, groups: list[TrainingGroup]) -> None:
        """Warn once when ``warn_no_signal_after`` phases in a row gave every group equal rewards."""
        silent = all(has_zero_std(g.rewards) for g in groups)
        self._phases_without_signal = self._phases_without_signal + 1 if silent else 0
        if self.warn_no_signal_after and self._phases_without_signal == self.warn_no_signal_after:
            samples = sum(g.size for g in groups)
            unparsed = sum(g.parse_failures for g in groups) / max(samples, 1)
            rank_zero_warn(
                f"No learning signal: the last {self._phases_without_signal} rollout phases had no group with reward "
                f"variance (every advantage is 0; {unparsed:.0%} of the latest outputs did not parse). To fix: add "
                "teacher demonstrations (model.rollout.demonstrations: 1), start from a warm-started adapter "
                "(model.policy.adapter), or use a bigger policy."
            )
