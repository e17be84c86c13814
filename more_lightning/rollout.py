"""``RolloutCallback``: the rollout phase of Step-GRPO, run whenever the training stream needs new groups.

- ``teacher_forced`` (official Step-GRPO): take the next teacher steps from the data module; for each, sample ``n``
  completions of the step prompt (one GROUP) and score them with the step rewards against the teacher's gold.
- ``on_policy`` (beyond the official code): run the next episodes live (``episodes.py``): at every step of every
  episode, sample ``n`` outputs of the *current* state (a group), score them (``rewards/on_policy.py``), search the
  experts for real, and continue with one of them (``continue_with``).

Both give groups with advantages; then — when the loss needs them — the old log-probs (several optimizer steps per
phase) and the reference log-probs (``beta > 0``, adapter disabled). The policy is in eval mode with no grad during the
phase. Timings and statistics go to the module, which logs them with the next training step.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Literal

import lightning.pytorch as pl
import torch

from more_lightning.data.buffer import Group, RolloutBuffer
from more_lightning.data.trajectories import TeacherStep
from more_lightning.episodes import ContinueWith, EpisodeConfig, EpisodeRunner
from more_lightning.grpo.advantages import group_advantages
from more_lightning.policy.generation import (
    SamplingConfig,
    collate_sequences,
    completion_token_stats,
    sample_completions,
    tokenizer_of,
)
from more_lightning.policy.sampler import PolicySampler
from more_lightning.rewards.on_policy import OnPolicyRewarder, RewardWeights
from more_lightning.rewards.scoring import MoREStepScorer, StepScorer


class RolloutCallback(pl.Callback):
    """Fills the data module's rollout buffer by running the policy.

    Args:
        group_size: completions sampled per step prompt (the GRPO group size ``n``).
        groups_per_rollout: step prompts per rollout phase.
        prompts_per_generate: step prompts sampled together in one ``generate`` call.
        sampling: temperature, top-p, top-k, max new tokens.
        scorer: the teacher-forced reward source (default: the official MoRE step rewards).
        mode: ``teacher_forced`` (official: teacher histories, no retrieval in the loop) or ``on_policy`` (live
            episodes against the data module's experts).
        episodes_per_rollout: on-policy: episodes run per rollout phase.
        episode: on-policy: step limit, retrieval depth.
        continue_with: on-policy: ``teacher`` (where the episode has a teacher step), ``best`` or ``sample``.
        reward_weights: on-policy: weights of the ``reference``, ``retrieval`` and ``outcome`` rewards.
        seed: sampling seed (phase ``i`` uses ``seed + i``).
    """

    def __init__(
        self,
        group_size: int = 5,
        groups_per_rollout: int = 8,
        prompts_per_generate: int = 8,
        sampling: SamplingConfig = SamplingConfig(),
        scorer: StepScorer | None = None,
        mode: Literal["teacher_forced", "on_policy"] = "teacher_forced",
        episodes_per_rollout: int = 2,
        episode: EpisodeConfig = EpisodeConfig(),
        continue_with: ContinueWith = "best",
        reward_weights: RewardWeights = RewardWeights(),
        seed: int = 0,
    ) -> None:
        if group_size < 2:
            raise ValueError("group_size must be at least 2: a group of one has no baseline")
        self.group_size = group_size
        self.groups_per_rollout = groups_per_rollout
        self.prompts_per_generate = prompts_per_generate
        self.sampling = sampling
        self.scorer = scorer or MoREStepScorer()
        self.mode = mode
        self.episodes_per_rollout = episodes_per_rollout
        self.episode = episode
        self.continue_with = continue_with
        self.reward_weights = reward_weights
        self.seed = seed
        self._trainer: pl.Trainer | None = None
        self._module = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "buffer"):
            raise TypeError("RolloutCallback needs a StepGRPODataModule (trainer.fit(model, datamodule=...))")
        self._trainer, self._module = trainer, pl_module
        datamodule.buffer.producer = self.fill

    def _needs_old_logprobs(self, groups: int) -> bool:
        datamodule = self._trainer.datamodule
        micro_batches = math.ceil(groups / datamodule.groups_per_batch)
        steps_per_phase = math.ceil(micro_batches / self._trainer.accumulate_grad_batches)
        return datamodule.ppo_epochs > 1 or steps_per_phase > 1

    @torch.no_grad()
    def _token_logprobs(self, groups: list[Group], reference: bool) -> list[torch.Tensor]:
        model = self._module.model
        pad = tokenizer_of(self._module.processor).pad_token_id
        out = []
        for group in groups:
            inputs, mask = collate_sequences([group.prompt_inputs] * group.size, group.completions, pad)
            if reference:
                with model.disable_adapter():
                    logprobs, _ = completion_token_stats(model, inputs, mask, with_entropy=False)
            else:
                logprobs, _ = completion_token_stats(model, inputs, mask, with_entropy=False)
            out.append(logprobs.cpu())
        return out

    def _sample_groups(self, steps: list[TeacherStep], phase: int) -> tuple[list[Group], dict[str, float]]:
        module = self._module
        tokenizer = tokenizer_of(module.processor)
        groups: list[Group] = []
        timings = Counter()
        for start in range(0, len(steps), self.prompts_per_generate):
            chunk = steps[start : start + self.prompts_per_generate]
            began = time.perf_counter()
            prompt_inputs, completions = sample_completions(
                module.model,
                module.processor,
                [s.prompt for s in chunk],
                self.group_size,
                self.sampling,
                generator_seed=self.seed + phase * 100_003 + start,
            )
            timings["generation"] += time.perf_counter() - began
            began = time.perf_counter()
            for step, inputs, tokens in zip(chunk, prompt_inputs, completions, strict=True):
                texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
                scored = self.scorer.score(step.step_type, step.gold, texts)
                rewards = torch.tensor([s.reward for s in scored], dtype=torch.float32)
                groups.append(
                    Group(
                        prompt=step.prompt,
                        prompt_inputs=inputs,
                        completions=list(tokens),
                        texts=texts,
                        rewards=rewards,
                        advantages=group_advantages(rewards),
                        parse_failures=sum(s.parse_failed for s in scored),
                        experts=[getattr(s.parsed, "experts", ()) for s in scored],
                    )
                )
            timings["scoring"] += time.perf_counter() - began
        return groups, dict(timings)

    def _episode_groups(self, phase: int) -> tuple[list[Group], dict[str, float]]:
        module, datamodule = self._module, self._trainer.datamodule
        if datamodule.experts is None:
            raise ValueError("on_policy rollouts need experts: set data.experts (an ExpertPool) in the config")
        sampler = PolicySampler(
            module.model, module.processor, self.sampling, self.prompts_per_generate, seed=self.seed + phase * 100_003
        )
        scorer = self.scorer if isinstance(self.scorer, MoREStepScorer) else MoREStepScorer()
        rewarder = OnPolicyRewarder(self.reward_weights, scorer)
        runner = EpisodeRunner(
            sampler,
            datamodule.experts,
            self.episode,
            self.group_size,
            rewarder,
            self.continue_with,
            seed=self.seed + phase,
        )
        traces = runner.run(datamodule.next_episodes(self.episodes_per_rollout))
        groups = []
        timings = Counter()
        for trace in traces:
            timings.update(trace.seconds)
            for scored in trace.groups:
                sampled = scored.group
                rewards = torch.tensor(scored.rewards, dtype=torch.float32)
                groups.append(
                    Group(
                        prompt=sampled.prompt,
                        prompt_inputs=sampled.prompt_inputs,
                        completions=sampled.completions,
                        texts=sampled.texts,
                        rewards=rewards,
                        advantages=group_advantages(rewards),
                        parse_failures=scored.parse_failures,
                        experts=scored.experts,
                        source=trace.episode.id,
                    )
                )
        return groups, dict(timings)

    def fill(self, buffer: RolloutBuffer) -> None:
        """One rollout phase: sample, score and store the groups of this phase."""
        module = self._module
        was_training = module.model.training
        module.model.eval()
        began = time.perf_counter()
        try:
            if self.mode == "on_policy":
                groups, timings = self._episode_groups(buffer.phases)
            else:
                steps = self._trainer.datamodule.next_steps(self.groups_per_rollout)
                groups, timings = self._sample_groups(steps, buffer.phases)
            logprob_began = time.perf_counter()
            if self._needs_old_logprobs(len(groups)):
                for group, logprobs in zip(groups, self._token_logprobs(groups, reference=False), strict=True):
                    group.old_logprobs = logprobs
            if module.loss_config.beta > 0:
                for group, logprobs in zip(groups, self._token_logprobs(groups, reference=True), strict=True):
                    group.ref_logprobs = logprobs
            timings["logprobs"] = time.perf_counter() - logprob_began
        finally:
            module.model.train(was_training)
        buffer.groups = groups
        timings["total"] = time.perf_counter() - began
        module.record_rollout(groups, timings)
