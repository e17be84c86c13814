"""What an episode did, step by step: the records the episode runner fills and evaluation, ``ask``, ``synthesize``
and training read — the routes, passages and answers, and what the episode cost (retrievals, passages read, prompt
tokens, seconds)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from more_lightning.policy.sampler import SampledGroup
from more_lightning.protocol.records import Episode, Passage, StepPrompt, SubStep

UNPARSED_ROUTE = "(unparsed)"
"""The route of a routing step whose output did not follow the protocol (routing ends there)."""
ENDED_ROUTE = "(ended)"
"""The route at a step the episode never reached: routing had stopped, failed or hit ``max_steps`` before it."""


@dataclass
class RewardedGroup:
    """A :class:`SampledGroup` of one episode step with its rewards: made by the episode runner (on-policy training),
    read by the rollout (``train/rollout.py``), which turns it into a ``TrainingGroup``."""

    group: SampledGroup
    rewards: list[float]
    parse_failures: int
    experts: list[tuple[str, ...]] = field(default_factory=list)


@dataclass
class StepTrace:
    """One routing step and its sub-answer."""

    routing_output: str
    sub_question: str
    experts: tuple[str, ...]
    passages: list[Passage]
    answer_output: str = ""
    answer: str = ""
    retries: int = 0
    routing_prompt: StepPrompt | None = None
    """The prompt the routing output answered (``None`` for teacher steps and single-retrieval baselines)."""
    answer_prompt: StepPrompt | None = None
    """The sub-answer prompt, passages included."""


def _question_key(question: str) -> str:
    return " ".join(question.lower().split()).rstrip("?.! ")


@dataclass
class EpisodeTrace:
    """Everything an episode did, for evaluation reports, ``ask`` and training."""

    episode: Episode
    steps: list[StepTrace] = field(default_factory=list)
    final_output: str = ""
    final_answer: str = ""
    parse_failures: int = 0
    retries: int = 0
    retrieval_calls: int = 0
    """Searches run: one per expert per routing step (the cost ``all`` multiplies)."""
    passages_read: int = 0
    """Passages placed in the sub-answer prompts (top ``passages_per_expert`` of each expert searched)."""
    prompt_tokens: int = 0
    """Tokens of every prompt the policy read (image tokens and re-sampled prompts included; a prompt sampled ``n``
    times counts once), as the policy's processor encodes them; 0 from a sampler that does not tokenize."""
    seconds: Counter = field(default_factory=Counter)
    """Wall seconds by part (generation, retrieval, scoring); a batch's shared time is split evenly."""
    groups: list[RewardedGroup] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    """The routing decision of each routing step that ran, in order: the chosen experts (comma-joined), ``none``
    (the episode stopped; for the ``none`` router, a step without retrieval), or ``(unparsed)``. Routing accuracy
    compares step ``k``'s with ``Episode.gold_expert_at(k)``. A step that repeated an earlier search under
    ``episode.stop_on_repeat`` is recorded with the experts it chose, and ends the episode (:attr:`ended_on_repeat`)."""
    ended_on_repeat: bool = False
    """Routing ended on a repeated sub-question (``episode.stop_on_repeat``), not searched again."""
    stop_prompt: StepPrompt | None = None
    """The routing prompt whose parsed output ended routing with ``none`` (``None``: routing ran to ``max_steps``
    or ended on an unparseable output)."""
    final_prompt: StepPrompt | None = None

    @property
    def first_route(self) -> str:
        """The first routing decision (empty before the episode runs)."""
        return self.routes[0] if self.routes else ""

    def route_at(self, step: int) -> str:
        """The routing decision of step ``step`` (0-based), ``(ended)`` where the episode never reached it."""
        return self.routes[step] if step < len(self.routes) else ENDED_ROUTE

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    def asked(self, sub_question: str, experts: tuple[str, ...]) -> bool:
        """Whether an earlier step of this episode searched ``experts`` for ``sub_question`` (same words up to case,
        spacing and end punctuation)."""
        key = _question_key(sub_question)
        return any(s.experts == experts and _question_key(s.sub_question) == key for s in self.steps)

    def history(self) -> list[SubStep]:
        return [SubStep(s.sub_question, s.answer, s.experts, tuple(s.passages)) for s in self.steps]

    def to_json(self) -> dict:
        return {
            "id": self.episode.id,
            "dataset": self.episode.dataset,
            "question": self.episode.question,
            "image": self.episode.image,
            "golds": list(self.episode.golds),
            "gold_expert": self.episode.gold_expert,
            "gold_experts": [s.experts[0] for s in self.episode.teacher or () if s.experts],
            "first_route": self.first_route,
            "routes": self.routes,
            "final_answer": self.final_answer,
            "final_output": self.final_output,
            "parse_failures": self.parse_failures,
            "retries": self.retries,
            "ended_on_repeat": self.ended_on_repeat,
            "retrieval_calls": self.retrieval_calls,
            "passages_read": self.passages_read,
            "prompt_tokens": self.prompt_tokens,
            "seconds": dict(self.seconds),
            "steps": [
                {
                    "sub_question": s.sub_question,
                    "experts": list(s.experts),
                    "routing_output": s.routing_output,
                    "answer": s.answer,
                    "answer_output": s.answer_output,
                    "retries": s.retries,
                    "passages": [
                        {"id": p.id, "expert": p.expert, "score": p.score, "text": p.text} for p in s.passages
                    ],
                }
                for s in self.steps
            ],
        }
