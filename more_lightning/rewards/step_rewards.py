"""The Step-GRPO step rewards of MoRE (official definitions; no separate format reward).

- **Routing** (``ret`` step): ``0.5 · cos(E(sub_question), E(gold_query)) + 0.5 · 1[exactly one expert ∧ it is the
  first gold expert]``, with ``E`` a normalised dense embedding (official: BGE-M3; default here: the packaged MiniLM).
  An output that does not parse, names an unknown expert, or mixes ``none`` with another expert scores 0. As
  officially, the loop's none rule is not part of the reward: an empty sub-question, a real sub-question with expert
  ``none``, or sub-question ``none`` with a real expert still score ``0.5·cos + 0.5·[…]``; ``strict_none_pairing``
  scores them 0 instead.
- **Answer** (``ans`` step, sub-answers and final answers): ``r = answer_recall(<answer>, golds)`` (the F1-Recall
  metric). One gold of ≤ 5 words (split on spaces): ``1[r == 1]``; one gold of > 5 words: ``r``; several golds:
  ``1[r == 1]``. A missing ``<think>`` or ``<answer>`` scores 0.

Embeddings are batched: one embedder call per group (the gold query plus every parsed sub-question).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from more_lightning.protocol.experts import DEFAULT_EXPERTS, ExpertSpec
from more_lightning.protocol.parse import AnswerOutput, RoutingOutput, parse_answer, parse_routing
from more_lightning.rewards.metric import answer_recall

SHORT_GOLD_WORDS = 5
"""A single gold answer of at most this many words must be recalled completely to score."""


class Embedder(Protocol):
    """Anything that turns texts into L2-normalised vectors (e.g. ``experts.embedders.TextEmbedder``)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class ScoredOutput:
    """One sampled output with its parse and reward."""

    reward: float
    parsed: RoutingOutput | AnswerOutput

    @property
    def parse_failed(self) -> bool:
        """Whether the output breaks the protocol (the loop's none rule included), whatever its reward."""
        return not self.parsed.ok


def is_rewarded(parsed: RoutingOutput, strict_none_pairing: bool = False) -> bool:
    """Whether the routing reward scores ``parsed`` (else it gets 0)."""
    return parsed.ok if strict_none_pairing else parsed.scorable


def routing_reward_from_parts(
    parsed: RoutingOutput, gold_experts: Sequence[str], cosine: float, strict_none_pairing: bool = False
) -> float:
    """The routing reward of one parsed output, given the cosine of its sub-question to the gold query.

    The expert term compares with the first gold expert, as the official ``retriever[0]``.
    """
    if not is_rewarded(parsed, strict_none_pairing):
        return 0.0
    right_expert = len(parsed.experts) == 1 and len(gold_experts) >= 1 and parsed.experts[0] == gold_experts[0]
    return 0.5 * cosine + 0.5 * float(right_expert)


def routing_rewards(
    outputs: Sequence[str],
    gold_query: str,
    gold_experts: Sequence[str],
    embedder: Embedder,
    experts: Sequence[ExpertSpec] = DEFAULT_EXPERTS,
    strict_none_pairing: bool = False,
) -> list[ScoredOutput]:
    """Score a group of routing outputs against one teacher step, with one embedding call for the whole group."""
    parsed = [parse_routing(output, experts) for output in outputs]
    rewards = parsed_routing_rewards(parsed, gold_query, gold_experts, embedder, strict_none_pairing)
    return [ScoredOutput(r, p) for r, p in zip(rewards, parsed, strict=True)]


def parsed_routing_rewards(
    parsed: Sequence[RoutingOutput],
    gold_query: str,
    gold_experts: Sequence[str],
    embedder: Embedder,
    strict_none_pairing: bool = False,
) -> list[float]:
    """Routing rewards of already-parsed outputs (one embedding call for the gold query and all sub-questions)."""
    valid = [i for i, p in enumerate(parsed) if is_rewarded(p, strict_none_pairing)]
    cosines = np.zeros(len(parsed))
    if valid:
        vectors = embedder.embed([gold_query.lower().strip()] + [parsed[i].sub_question.strip() for i in valid])
        cosines[valid] = vectors[1:] @ vectors[0]
    gold = tuple(e.strip().lower() for e in gold_experts)
    return [
        routing_reward_from_parts(p, gold, float(c), strict_none_pairing) for p, c in zip(parsed, cosines, strict=True)
    ]


def answer_reward_from_recall(recall: float, golds: Sequence[str]) -> float:
    """Apply the ≤ 5-word / > 5-word / several-golds rule to a recall."""
    if len(golds) == 1 and len(golds[0].split(" ")) > SHORT_GOLD_WORDS:
        return recall
    return 1.0 if recall == 1.0 else 0.0


def answer_rewards(outputs: Sequence[str], golds: Sequence[str]) -> list[ScoredOutput]:
    """Score a group of answer outputs against the gold answers."""
    scored = []
    for output in outputs:
        parsed = parse_answer(output)
        reward = answer_reward_from_recall(answer_recall(parsed.answer, golds), golds) if parsed.ok else 0.0
        scored.append(ScoredOutput(reward, parsed))
    return scored
