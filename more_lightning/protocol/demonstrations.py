"""Teacher demonstrations: a teacher's step written as a policy output in the protocol's format.

Guided Step-GRPO (``RolloutCallback(demonstrations=k)``) puts ``k`` of these into each group whose step has a teacher,
in place of ``k`` samples (off-policy guidance, as in LUFFY, arXiv 2504.14945). A base model that never writes the
protocol's tags otherwise sees only zero rewards, so its groups have no advantage to learn from; the demonstration
scores like a perfect sample and pulls the policy towards the format and the teacher's decisions, while the other
samples keep the objective on-policy. The teacher gives no reasoning, so ``<think>`` holds a short neutral line
(short, so a demonstration fits the small ``max_new_tokens`` a CPU run uses).

Tag contents carry no padding newlines, so :mod:`more_lightning.protocol.parse` reads back exactly the teacher's
sub-question, experts and answer (and later prompts show them as the teacher wrote them).
"""

from __future__ import annotations

from collections.abc import Sequence

from more_lightning.protocol.experts import NONE_EXPERT

ROUTING_THINK = "One more fact is needed."
STOP_THINK = "The answers so far are enough."
ANSWER_THINK = "The information given answers it."


def routing_demonstration(sub_question: str, experts: Sequence[str]) -> str:
    """A routing output choosing ``experts`` for ``sub_question`` (``none`` ends routing)."""
    think = STOP_THINK if tuple(experts) == (NONE_EXPERT,) else ROUTING_THINK
    return (
        f"<think>\n{think}\n</think>\n<sub-question>{sub_question.strip()}</sub-question>\n"
        f"<ret>{', '.join(experts)}</ret>"
    )


def answer_demonstration(answer: str) -> str:
    """A sub-answer or final-answer output giving ``answer``."""
    return f"<think>\n{ANSWER_THINK}\n</think>\n<answer>{answer.strip()}</answer>"
