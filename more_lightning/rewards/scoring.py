"""Scoring a group of sampled completions for one step: the reward source the rollout uses.

:class:`MoREStepScorer` applies the official step rewards (``step_rewards.py``) against a teacher step's gold. Any
other scorer with the same ``score`` method can be configured instead (``class_path`` in YAML).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from more_lightning.experts.embedders import MINILM, TextEmbedder
from more_lightning.protocol.experts import DEFAULT_EXPERTS, ExpertSpec
from more_lightning.protocol.records import RoutingGold
from more_lightning.rewards.step_rewards import ScoredOutput, answer_rewards, routing_rewards


class StepScorer(ABC):
    """Turns a group of completions of one step into rewards."""

    @abstractmethod
    def score(
        self, step_type: str, gold: RoutingGold | Sequence[str], completions: Sequence[str]
    ) -> list[ScoredOutput]:
        """One :class:`ScoredOutput` per completion."""


class MoREStepScorer(StepScorer):
    """The official MoRE step rewards: routing (cosine + right expert) and answer (token recall).

    Args:
        embedder: the sentence embedder of the routing reward's cosine term (``minilm``; official: ``BAAI/bge-m3``).
        experts: the experts a routing output may name (default: the three MoRE experts).
        strict_none_pairing: score 0 for routing outputs that break the loop's none rule (an empty sub-question, a
            real sub-question with expert ``none``, sub-question ``none`` with a real expert). Off by default: the
            official reward scores them ``0.5·cos + 0.5·[right expert]``, a loophole this closes.
    """

    def __init__(
        self, embedder: str = MINILM, experts: list[ExpertSpec] | None = None, strict_none_pairing: bool = False
    ) -> None:
        self.embedder = TextEmbedder(embedder)
        self.experts = tuple(experts) if experts else DEFAULT_EXPERTS
        self.strict_none_pairing = strict_none_pairing

    def score(
        self, step_type: str, gold: RoutingGold | Sequence[str], completions: Sequence[str]
    ) -> list[ScoredOutput]:
        if step_type == "ret":
            if not isinstance(gold, RoutingGold):
                raise TypeError("a routing step needs a RoutingGold")
            return routing_rewards(
                completions, gold.query, gold.experts, self.embedder, self.experts, self.strict_none_pairing
            )
        return answer_rewards(completions, list(gold))
