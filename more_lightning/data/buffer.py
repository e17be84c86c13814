"""Training groups and the rollout buffer the training step takes its micro-batches from.

The group types, by stage: a sampler makes a ``SampledGroup`` (``policy/sampler.py``); the episode runner scores it
into a ``RewardedGroup`` (``agent/episodes.py``); the rollout makes each a :class:`TrainingGroup` (rewards,
advantages, log-probs); the :class:`RolloutBuffer` cuts a phase of them into :class:`GroupBatch` micro-batches of
*whole* groups, which the training step reads (``train/module.py``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields

import torch

from more_lightning.errors import SettingError
from more_lightning.grpo.advantages import group_advantages
from more_lightning.protocol.records import StepPrompt


@dataclass
class TrainingGroup:
    """One step prompt, its ``n`` completions, their rewards and advantages (a Step-GRPO group). Made by the rollout
    (``train/rollout.py``) or the warm start (``train/sft.py``); read by the loss in ``MoRELightningModule``."""

    prompt: StepPrompt
    prompt_inputs: dict[str, torch.Tensor]
    """The processor outputs of the prompt (unpadded, batch dimension 1)."""
    completions: list[torch.Tensor]
    """Token ids of each completion (1-D, up to and including the stop token)."""
    texts: list[str]
    rewards: torch.Tensor
    advantages: torch.Tensor
    parse_failures: int = 0
    experts: list[tuple[str, ...]] = field(default_factory=list)
    """The experts each routing completion chose (empty for answer steps and for outputs that do not parse)."""
    old_logprobs: torch.Tensor | None = None
    """``(n, C)`` log-probs under the rollout policy, when the rollout computed them."""
    ref_logprobs: torch.Tensor | None = None
    """``(n, C)`` log-probs under the reference (adapter disabled), when ``beta > 0``."""
    engine_logprobs: torch.Tensor | None = None
    """``(n, C)`` sampled-token log-probs under the engine's weights (vLLM; NaN where it did not sample)."""
    source: str = ""
    demonstrations: int = 0
    """The last ``demonstrations`` completions are teacher demonstrations, not samples."""

    @classmethod
    def from_sample(
        cls, sampled, rewards: list[float], parse_failures: int, experts: list, source: str = ""
    ) -> TrainingGroup:
        """A group from a sampler's output (a ``SampledGroup``) and its rewards; advantages within the group."""
        scores = torch.tensor(rewards, dtype=torch.float32)
        return cls(
            prompt=sampled.prompt,
            prompt_inputs=sampled.prompt_inputs,
            completions=sampled.completions,
            texts=sampled.texts,
            rewards=scores,
            advantages=group_advantages(scores),
            parse_failures=parse_failures,
            experts=list(experts),
            engine_logprobs=_padded(sampled.engine_logprobs),
            source=source,
            demonstrations=sampled.demonstrations,
        )

    @property
    def step_type(self) -> str:
        return self.prompt.step_type

    @property
    def size(self) -> int:
        return len(self.completions)

    @property
    def completion_tokens(self) -> int:
        return sum(len(c) for c in self.completions)

    @property
    def generated_tokens(self) -> int:
        """Tokens of the sampled completions (teacher demonstrations left out)."""
        return sum(len(c) for c in self.completions[: self.size - self.demonstrations])

    def to_state(self) -> dict:
        """Plain tensors, strings and numbers (what a ``weights_only`` checkpoint load accepts)."""
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("prompt", "experts")}
        state["prompt"] = {f.name: getattr(self.prompt, f.name) for f in fields(self.prompt)}
        state["prompt"]["images"] = list(self.prompt.images)
        state["experts"] = [list(e) for e in self.experts]
        return state

    @classmethod
    def from_state(cls, state: dict) -> TrainingGroup:
        prompt = dict(state["prompt"], images=tuple(state["prompt"]["images"]))
        experts = [tuple(e) for e in state["experts"]]
        return cls(**dict(state, prompt=StepPrompt(**prompt), experts=experts))


def _padded(rows: list[torch.Tensor] | None) -> torch.Tensor | None:
    """Per-completion 1-D tensors as one ``(n, C)`` tensor, NaN-padded."""
    if rows is None:
        return None
    out = torch.full((len(rows), max(1, max(len(r) for r in rows))), float("nan"))
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


@dataclass
class GroupBatch:
    """The groups of one micro-batch, and the completion-token count of the optimizer step it belongs to. Made by
    :meth:`RolloutBuffer.next_batch`; read by ``MoRELightningModule.training_step``."""

    groups: list[TrainingGroup]
    step_tokens: int


class RolloutBuffer:
    """The groups of the current rollout phase and the micro-batches still to come from them.

    The training step fills it with a new phase when it is :attr:`empty` and takes one :class:`GroupBatch` per
    micro-batch. A phase is shuffled and cut into micro-batches of ``groups_per_batch`` groups, ``ppo_epochs`` times;
    ``accumulate`` micro-batches make one optimizer step (for ``dapo`` token counts). The micro-batches still to
    come are part of the state, so a checkpoint taken in the middle of a phase resumes with exactly the batches an
    uninterrupted run would have trained on.
    """

    def __init__(self, groups_per_batch: int = 1, ppo_epochs: int = 1, seed: int = 0) -> None:
        self.groups_per_batch = groups_per_batch
        self.ppo_epochs = ppo_epochs
        self.groups: list[TrainingGroup] = []
        self.phases = 0
        """Rollout phases filled so far (the next phase's index)."""
        self.pending: list[tuple[list[int], int]] = []
        """The rest of the phase: (indices into ``groups``, completion tokens of its optimizer step)."""
        self.rng = random.Random(seed)

    @property
    def empty(self) -> bool:
        """Whether every micro-batch of the current phase has been taken (a new phase is due)."""
        return not self.pending

    def fill(self, groups: list[TrainingGroup], accumulate: int = 1) -> None:
        """Hold a new rollout phase and plan its micro-batches."""
        if not groups:
            raise SettingError("The rollout phase produced no groups (is the trajectory file empty?).")
        self.groups = groups
        self.phases += 1
        batches = []
        for _ in range(self.ppo_epochs):
            order = list(range(len(groups)))
            self.rng.shuffle(order)
            batches += [order[i : i + self.groups_per_batch] for i in range(0, len(order), self.groups_per_batch)]
        self.pending = []
        for start in range(0, len(batches), accumulate):
            step = batches[start : start + accumulate]
            tokens = sum(groups[i].completion_tokens for batch in step for i in batch)
            self.pending += [(batch, tokens) for batch in step]

    def next_batch(self) -> GroupBatch:
        """The next micro-batch of the current phase."""
        indices, tokens = self.pending.pop(0)
        return GroupBatch([self.groups[i] for i in indices], tokens)

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {
            "phases": self.phases,
            "groups": [g.to_state() for g in self.groups],
            "pending": [[list(b), t] for b, t in self.pending],
            "rng": [version, list(internal), gauss],
        }

    def load_state_dict(self, state: dict) -> None:
        self.phases = state["phases"]
        self.groups = [TrainingGroup.from_state(g) for g in state["groups"]]
        self.pending = [(list(b), int(t)) for b, t in state["pending"]]
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
