"""Parsing policy output. Never raises on model output: every result says what, if anything, was wrong.

As in the official code the output is lower-cased first, then read with non-greedy DOTALL regexes; the first match of
a repeated tag wins. Routing experts are the ``<ret>`` text split on ``,`` and trimmed.

Two kinds of problem are told apart. ``error``: the output cannot be scored by the official routing reward (a tag
missing, an empty or unknown expert name, ``none`` mixed with another expert). ``pairing_error``: the output breaks
the episode loop's none rule — a non-empty sub-question; a sub-question of ``none``/``null`` goes with expert ``none``
and nothing else, and the other way round. The loop needs both rules (``ok``); the official reward only the first
(``scorable``), unless ``strict_none_pairing`` is asked for (``rewards/step_rewards.py``).

Sub-questions and answers are kept exactly as written inside their tags (not trimmed): the official prompts carry
them that way into later steps, and our prompt builders then reproduce the official step prompts byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from more_lightning.protocol.experts import DEFAULT_EXPERTS, NONE_EXPERT, ExpertSpec, expert_names

_TAGS = {name: re.compile(rf"<{name}>(.*?)</{name}>", re.DOTALL) for name in ("think", "sub-question", "ret", "answer")}
NONE_SUB_QUESTIONS = ("none", "null")


def _tag(text: str, name: str) -> str | None:
    match = _TAGS[name].search(text)
    return match.group(1) if match else None


@dataclass(frozen=True)
class RoutingOutput:
    """A parsed routing step. ``error`` is ``None`` when the output follows the protocol."""

    think: str | None
    sub_question: str | None
    experts: tuple[str, ...]
    error: str | None = None
    """Why the official routing reward cannot score this output (it then scores 0)."""
    pairing_error: str | None = None
    """Why the output breaks the loop's none rule (empty sub-question; ``none`` sub-question ⇔ ``none`` expert)."""

    @property
    def scorable(self) -> bool:
        """Whether the official routing reward scores this output (the none rule does not matter to it)."""
        return self.error is None

    @property
    def ok(self) -> bool:
        """Whether the output follows the whole protocol, the none rule included (what the episode loop needs)."""
        return self.error is None and self.pairing_error is None

    @property
    def stops(self) -> bool:
        """Whether this step ends the routing loop (the ``none`` expert / sub-question)."""
        return self.ok and self.experts == (NONE_EXPERT,)


@dataclass(frozen=True)
class AnswerOutput:
    """A parsed answer step. ``answer`` is set whenever ``<answer>`` is present; ``error`` names what is missing."""

    think: str | None
    answer: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_routing(output: str, experts: Sequence[ExpertSpec] = DEFAULT_EXPERTS) -> RoutingOutput:
    """Parse ``<think>…</think><sub-question>…</sub-question><ret>…</ret>``."""
    text = output.lower()
    think, sub_question, ret = (_tag(text, name) for name in ("think", "sub-question", "ret"))
    chosen = tuple(e.strip() for e in ret.split(",")) if ret is not None else ()
    missing = [
        name for name, value in (("think", think), ("sub-question", sub_question), ("ret", ret)) if value is None
    ]
    error = pairing_error = None
    if missing:
        error = "missing " + ", ".join(f"<{name}>" for name in missing)
    elif not all(chosen):
        error = f"empty expert name in <ret>{ret}</ret>"
    elif unknown := [e for e in chosen if e not in expert_names(experts)]:
        error = f"unknown expert(s) {unknown}; known: {list(expert_names(experts))}"
    elif NONE_EXPERT in chosen and len(chosen) > 1:
        error = "expert 'none' mixed with other experts"
    elif not sub_question.strip():
        pairing_error = "empty <sub-question>"
    elif (sub_question.strip() in NONE_SUB_QUESTIONS) != (chosen == (NONE_EXPERT,)):
        pairing_error = "sub-question 'none' and expert 'none' must go together"
    return RoutingOutput(think, sub_question, chosen, error, pairing_error)


def parse_answer(output: str) -> AnswerOutput:
    """Parse ``<think>…</think><answer>…</answer>``."""
    text = output.lower()
    think, answer = _tag(text, "think"), _tag(text, "answer")
    missing = [name for name, value in (("think", think), ("answer", answer)) if value is None]
    error = "missing " + ", ".join(f"<{name}>" for name in missing) if missing else None
    return AnswerOutput(think=think, answer=answer, error=error)
