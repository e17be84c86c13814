"""Rollout groups and the buffer the training dataloader reads them from.

A :class:`Group` is one Step-GRPO group: one step prompt, its ``n`` sampled completions, their rewards and
advantages (and the old/reference log-probs when the rollout computed them). The :class:`RolloutBuffer` holds the
groups of the current rollout phase; :class:`GroupBatches` turns it into an endless stream of batches of *whole*
groups, asking the buffer's producer (the rollout callback) for a new rollout phase whenever the current one has been
used ``ppo_epochs`` times.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields

import torch
from torch.utils.data import IterableDataset

from more_lightning.errors import SettingError
from more_lightning.grpo.advantages import group_advantages
from more_lightning.protocol.records import StepPrompt


@dataclass
class Group:
    """One step prompt and its ``n`` sampled completions (a Step-GRPO group)."""

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
    def from_sample(cls, sampled, rewards: list[float], parse_failures: int, experts: list, source: str = "") -> Group:
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
    def from_state(cls, state: dict) -> Group:
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


RolloutProducer = Callable[["RolloutBuffer"], None]


class RolloutBuffer:
    """The groups of the current rollout phase, and who makes the next phase."""

    def __init__(self) -> None:
        self.groups: list[Group] = []
        self.producer: RolloutProducer | None = None
        self.phases = 0

    def refill(self) -> None:
        """Replace the groups with a new rollout phase from the producer."""
        if self.producer is None:
            raise SettingError(
                "The rollout buffer is empty and nothing fills it: set model.rollout (a RolloutCallback)."
            )
        self.producer(self)  # replaces self.groups only when the phase succeeds
        self.phases += 1
        if not self.groups:
            raise SettingError("The rollout phase produced no groups (is the trajectory file empty?).")

    def state_dict(self) -> dict:
        return {"phases": self.phases, "groups": [g.to_state() for g in self.groups]}

    def load_state_dict(self, state: dict) -> None:
        self.phases = state.get("phases", 0)
        self.groups = [Group.from_state(g) for g in state.get("groups", [])]


@dataclass
class GroupBatch:
    """The groups of one micro-batch, and the completion-token count of the optimizer step it belongs to."""

    groups: list[Group]
    step_tokens: int


class GroupBatches(IterableDataset):
    """An endless stream of micro-batches of whole groups from a :class:`RolloutBuffer`.

    Each rollout phase is shuffled and cut into micro-batches of ``groups_per_batch`` groups, ``ppo_epochs`` times;
    then the buffer is refilled. ``accumulate`` micro-batches make one optimizer step (for ``dapo`` token counts).
    The micro-batches still to come in the current phase are part of the state, so a checkpoint taken in the middle
    of a phase resumes with exactly the batches an uninterrupted run would have trained on.
    """

    def __init__(
        self, buffer: RolloutBuffer, groups_per_batch: int, ppo_epochs: int = 1, accumulate: int = 1, seed: int = 0
    ) -> None:
        self.buffer = buffer
        self.groups_per_batch = groups_per_batch
        self.ppo_epochs = ppo_epochs
        self.accumulate = accumulate
        self.rng = random.Random(seed)
        self.pending: list[tuple[list[int], int]] = []
        """The rest of the phase: (indices into ``buffer.groups``, completion tokens of its optimizer step)."""

    def _plan_phase(self) -> list[tuple[list[int], int]]:
        batches = []
        for _ in range(self.ppo_epochs):
            order = list(range(len(self.buffer.groups)))
            self.rng.shuffle(order)
            batches += [order[i : i + self.groups_per_batch] for i in range(0, len(order), self.groups_per_batch)]
        planned = []
        for start in range(0, len(batches), self.accumulate):
            step = batches[start : start + self.accumulate]
            tokens = sum(self.buffer.groups[i].completion_tokens for batch in step for i in batch)
            planned += [(batch, tokens) for batch in step]
        return planned

    def __iter__(self) -> Iterator[GroupBatch]:
        while True:
            if not self.pending:
                self.buffer.refill()
                self.pending = self._plan_phase()
            indices, tokens = self.pending.pop(0)
            yield GroupBatch([self.buffer.groups[i] for i in indices], tokens)

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"pending": [[list(b), t] for b, t in self.pending], "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict) -> None:
        self.pending = [(list(b), int(t)) for b, t in state["pending"]]
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
