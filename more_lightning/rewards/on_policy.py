"""Rewards for on-policy episodes, where the policy's own history (not a teacher's) leads each step.

Sources, each with a weight (a sample's reward is the weighted sum of the sources that apply to its step):
- ``reference`` — the official step rewards against a teacher trajectory's gold for this step, where one exists;
- ``stop`` — the routing step right after the teacher's last hop: the official routing reward against the stop step
  (sub-question and expert ``none``), the step the official trajectories end with when routing steps remain;
- ``retrieval`` — routing steps up to the teacher's last hop (all of them without a teacher): the best answer recall
  of the passages the sample's own search returned, against the question's gold answers (did this sub-question and
  expert find the answer?); ``none`` or unparseable → 0. Past the last hop it does not apply: searching again for
  what a hop already found would otherwise out-score stopping;
- ``outcome`` — answer steps: the answer recall of the sample's ``<answer>`` against the question's golds (final
  answers use the official ≤ 5-word rule; sub-answers the plain recall).
"""

from __future__ import annotations

from dataclasses import dataclass

from more_lightning.protocol.experts import NONE_EXPERT
from more_lightning.protocol.parse import AnswerOutput, RoutingOutput
from more_lightning.protocol.records import Episode, Passage, SubStep
from more_lightning.rewards.metric import answer_recall
from more_lightning.rewards.scoring import MoREStepScorer
from more_lightning.rewards.step_rewards import answer_reward_from_recall, parsed_routing_rewards

STOP_STEP = SubStep(NONE_EXPERT, "", (NONE_EXPERT,))
"""The gold of the routing step after the last hop: sub-question and expert ``none``, as official trajectories end."""


@dataclass
class RewardWeights:
    """Which reward sources on-policy rollouts use, and their weights (0 turns a source off)."""

    reference: float = 1.0
    """Teacher golds, where a teacher trajectory gives the step."""
    stop: float = 1.0
    """The routing step after the teacher's last hop: the official routing reward against the stop step (``none``)."""
    retrieval: float = 1.0
    """Routing steps up to the teacher's last hop: answer recall of the retrieved passages against the question's
    golds."""
    outcome: float = 1.0
    """Answer steps: answer recall of the answer against the question's golds."""


class OnPolicyRewarder:
    """Scores the groups of live episodes (see the module docstring)."""

    def __init__(self, weights: RewardWeights, scorer: MoREStepScorer) -> None:
        self.weights = weights
        self.scorer = scorer

    def routing(
        self, episode: Episode, step: int, parsed: list[RoutingOutput], passages: list[list[Passage]]
    ) -> list[float]:
        rewards = [0.0] * len(parsed)
        teacher = episode.teacher
        hops = len(teacher) if teacher is not None else None
        if hops is not None and step <= hops:
            weight, gold = (self.weights.reference, teacher[step]) if step < hops else (self.weights.stop, STOP_STEP)
            if weight:
                reference = parsed_routing_rewards(
                    parsed, gold.sub_question, gold.experts, self.scorer.embedder, self.scorer.strict_none_pairing
                )
                rewards = [r + weight * x for r, x in zip(rewards, reference, strict=True)]
        golds = list(episode.golds)
        if self.weights.retrieval and golds and (hops is None or step < hops):
            for i, (p, found) in enumerate(zip(parsed, passages, strict=True)):
                if p.ok and not p.stops and found:
                    rewards[i] += self.weights.retrieval * max(answer_recall(x.text, golds) for x in found)
        return rewards

    def answer(self, episode: Episode, step: int | None, parsed: list[AnswerOutput]) -> list[float]:
        rewards = [0.0] * len(parsed)
        teacher = episode.teacher
        golds = list(episode.golds)
        reference_golds = (
            golds if step is None else ([teacher[step].answer] if teacher and step < len(teacher) else None)
        )
        for i, p in enumerate(parsed):
            if not p.ok:
                continue
            if self.weights.reference and teacher is not None and reference_golds:
                recall = answer_recall(p.answer, reference_golds)
                rewards[i] += self.weights.reference * answer_reward_from_recall(recall, reference_golds)
            if self.weights.outcome and golds:
                recall = answer_recall(p.answer, golds)
                rewards[i] += self.weights.outcome * (
                    answer_reward_from_recall(recall, golds) if step is None else recall
                )
        return rewards
