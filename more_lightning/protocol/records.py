"""Typed records that cross module boundaries: passages, step prompts, and the steps of an episode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from more_lightning.protocol.experts import NONE_EXPERT

IMAGE_MARKER = "<image>"
"""Where an image goes in a step's user text (the official Step-GRPO files use the same marker)."""

StepType = Literal["ret", "ans"]


@dataclass(frozen=True)
class Passage:
    """One retrieved passage."""

    id: str
    """The source id (stable across re-indexing)."""
    text: str
    """What the policy reads (title included where the corpus has one)."""
    expert: str
    """The name of the expert that returned it."""
    score: float | None = None
    """The search score (distance, BM25 or hybrid score, as the expert reports it)."""


@dataclass(frozen=True)
class StepPrompt:
    """The input of one policy step: a system prompt and a user text with ``<image>`` markers."""

    step_type: StepType
    """``ret`` (routing) or ``ans`` (sub-answer or final answer)."""
    system: str
    problem: str
    """The user text; each ``<image>`` marker is where one image of ``images`` goes."""
    images: tuple[str, ...] = ()
    """Image file paths, one per marker, in order."""

    def messages(self) -> list[dict]:
        """HF chat messages: the system prompt, then the user content with text and image items in order."""
        content: list[dict] = []
        pieces = self.problem.split(IMAGE_MARKER)
        for i, piece in enumerate(pieces):
            if piece:
                content.append({"type": "text", "text": piece})
            if i < len(pieces) - 1:
                content.append({"type": "image"})
        return [
            {"role": "system", "content": [{"type": "text", "text": self.system}]},
            {"role": "user", "content": content},
        ]

    @property
    def image_count(self) -> int:
        return self.problem.count(IMAGE_MARKER)


@dataclass(frozen=True)
class RoutingGold:
    """The teacher's routing decision: the sub-question (gold query) and its expert(s)."""

    query: str
    experts: tuple[str, ...]

    @property
    def stops(self) -> bool:
        """Whether this is the stop step (expert ``none``: routing ends, the final answer follows)."""
        return self.experts == (NONE_EXPERT,)


@dataclass(frozen=True)
class SubStep:
    """One completed routing + sub-answer step of an episode, as later prompts show it."""

    sub_question: str
    answer: str
    experts: tuple[str, ...] = ()
    passages: tuple[Passage, ...] = ()


@dataclass
class Episode:
    """A question to work through the protocol, and what rewards and scores may use."""

    id: str
    question: str
    image: str | None = None
    golds: tuple[str, ...] = ()
    """The gold final answers (as the F1-Recall metric compares them)."""
    dataset: str = ""
    teacher: list[SubStep] | None = None
    """Teacher sub-steps (sub-question, answer, experts) where a teacher trajectory gives them."""
    gold_expert: str | None = None
    """The expert that holds the answer of the first hop, where the question names one: routing accuracy compares the
    first routing step's choice with it, and the ``gold`` router retrieves from it."""

    def gold_expert_at(self, step: int) -> str | None:
        """The gold expert of routing step ``step`` (0-based): ``gold_expert`` at step 0, else the teacher's hop
        ``step`` (its first expert); ``None`` past the teacher's last hop or where the question names none."""
        if step == 0 and self.gold_expert:
            return self.gold_expert
        if self.teacher is not None and step < len(self.teacher) and self.teacher[step].experts:
            return self.teacher[step].experts[0]
        return None
