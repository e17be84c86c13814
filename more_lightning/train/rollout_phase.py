"""What a rollout phase takes and gives: the current policy in, training groups and their statistics out.

The training step (``MoRELightningModule``) asks its rollout for a phase when its buffer is empty and passes the
policy of that moment, so every phase samples with the weights of the current optimizer step. Two rollouts take
this shape: ``RolloutCallback`` (Step-GRPO, teacher-forced or on-policy) and ``TeacherDemonstrations`` (the
supervised warm start).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

from more_lightning.data.buffer import TrainingGroup
from more_lightning.data.datamodule import StepGRPODataModule
from more_lightning.policy.token_stats import DEFAULT_CHUNK_TOKENS


@dataclass
class Policy:
    """The policy as a rollout uses it: the model being trained, its processor, and how to run its forward."""

    model: nn.Module
    """The policy model (base + LoRA adapter), in this process."""
    processor: Any
    """Its processor (or tokenizer)."""
    step: int = 0
    """The optimizer step these weights are at (the vLLM engine syncs its adapter copy to it)."""
    shared_prompt: bool = True
    """Encode each group's prompt once in the log-prob passes and generation (``policy/shared_prompt.py``)."""
    logits_chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    """Completion tokens whose logits exist at once in the log-prob passes (``policy/token_stats.py``)."""


@dataclass
class RolloutStats:
    """What a phase reports, logged with the training step that ran it."""

    timings: dict[str, float] = field(default_factory=dict)
    """Seconds: ``total`` and its parts (``generation``, ``scoring``, ``logprobs``, on-policy ``retrieval``)."""
    dropped: int = 0
    """Groups left out to give every rank the same number (several ranks, on-policy)."""
    routing_samples: tuple[int, int] | None = None
    """(samples choosing the gold expert, samples) at the first routing step of on-policy episodes naming one."""


@dataclass
class RolloutPhase:
    """The groups of one rollout phase and its statistics."""

    groups: list[TrainingGroup]
    stats: RolloutStats = field(default_factory=RolloutStats)


class Rollout(Protocol):
    """What the training step asks for a new phase (``model.rollout``)."""

    def run(
        self,
        policy: Policy,
        data: StepGRPODataModule,
        phase: int,
        accumulate: int = 1,
        reference: bool = False,
        recompute_old: bool = True,
    ) -> RolloutPhase:
        """Phase number ``phase``, sampled with ``policy`` from ``data``'s next inputs. ``accumulate``: micro-batches
        per optimizer step; ``reference``: add the reference log-probs (the loss's ``beta > 0``); ``recompute_old``:
        the old log-probs by the trainer where the phase needs them (``false``: the loss takes the engine's)."""
        ...
