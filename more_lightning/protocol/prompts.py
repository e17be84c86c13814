"""Building the three step prompts of the MoRE protocol, in the official MoRE formats.

- **routing** (``ret``): ``Origin question: {q}\\n`` then ``Sub-question{i}: {q_i}\\nAnswer{i}: {a_i}\\n`` per
  earlier step, then the image (if any).
- **sub-answer** (``ans``): a preamble naming each expert's passage prefix, the passages as ``{prefix}-{i}: {text}``
  lines (experts in configured order, top-k each), then
  ``\\n\\n Give me the answer(with the format <answer></answer>) to the Question: {sub_q}``, then the image.
- **final answer** (``ans``): the routing text (question + every sub-question/answer pair) and
  ``Now, give me the final answer of the origin question: {q}``, then the image; no passages.

The system prompts are the official ones (typos included, since a trained MoRE checkpoint expects them); the routing
prompt's expert list and guidelines are rendered from the configured experts. One deviation: the official routing
prompt has a stray trailing space after ``Text Retriever`:``; ours does not.

``style="compact"`` swaps the three system prompts for short ones with the same output format (the user texts stay
official). The official routing system prompt is ~450 tokens: on a CPU a small policy spends most of each step reading
it, and a 135M model follows a short instruction no worse. A deliberate difference, listed in ``docs/step_grpo.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from more_lightning.protocol.experts import DEFAULT_EXPERTS, ExpertSpec, check_unique
from more_lightning.protocol.records import IMAGE_MARKER, Passage, StepPrompt, SubStep

ROUTING_SYSTEM_TEMPLATE = (
    "You are a professional question decomposition expert for multi-hop QA systems. Your task is to decompose "
    "complex questions into **strictly single-hop** sub-questions and select appropriate retrievers.\n\n"
    "**Strict Output Format:**\n<think>\n[Analyze the original question and determine the next required "
    "sub-question. Do NOT reveal answers or perform multi-hop reasoning.]\n</think>\n<sub-question>\n[Exactly ONE "
    "single-hop question one time. If no further information is needed to answer the origin question, write "
    "'None'.]\n</sub-question>\n<ret> \n[Choose 1 retriever from: {titles}. Write 'None' if <sub-question> is "
    "'None'.]\n</ret>\n\n### Critical Rules:\n1. **Atomic Sub-question Definition**:\n   - A sub-question is "
    '"atomic" only if: \n     a) It cannot be further decomposed into simpler questions\n     b) It requires '
    "exactly **one retrieval action** to answer\n     c) Does NOT depend on answers to previous sub-questions\n"
    '     d) It can be helpful to answer the origin question\n   - Example: ❌ "Find the capital and population '
    'of France" → ✅ Split into two sub-questions\n\n2. **Retriever Selection Guidelines**:\n{guidelines}\n'
    "3. **Strict Prohibitions**:\n   - Never combine multiple questions in <sub-question>\n   - Never mention "
    "retrieved content in <think>\n   - Never select retrievers for non-atomic questions\n\n\n\n"
)
SUB_ANSWER_SYSTEM = (
    '"You are a professional question answering model. Your task is to carefully think through the question based '
    "on the information retrieved and then provide the final answer.\n\nStrict Output Format: \n<think> \n[Analyze "
    "the original question and the retrieved information. Break down the reasoning process step by step. Do NOT "
    "provide the final answer yet.] \n</think> \n<answer> \n[Provide the final answer based solely on the retrieved "
    "information.]\n</answer>\n"
)
FINAL_ANSWER_SYSTEM = (
    '"You are a professional question answering model. Your task is to carefully think through the question based '
    "on the sub-quetsions and its answers and then provide the final answer.\n\nStrict Output Format: \n<think> \n"
    "[Analyze the original question and sub-questions with its answers. Break down the reasoning process step by "
    "step. Do NOT provide the final answer yet.] \n</think> \n<answer> \n[Provide the final answer based solely on "
    "the information before.]\n</answer>\n"
)


COMPACT_ROUTING_SYSTEM_TEMPLATE = (
    "Pick the next single-hop sub-question of the question and the retriever that can answer it. Reply exactly:\n"
    "<think>one short line</think>\n<sub-question>the sub-question, or None when the answers so far are enough"
    "</sub-question>\n<ret>one of: {names}, or None</ret>\nRetrievers:\n{guidelines}"
)
COMPACT_ANSWER_SYSTEM = (
    "Answer the question from the information given. Reply exactly:\n<think>one short line</think>\n"
    "<answer>the answer</answer>\n"
)

PromptStyle = Literal["official", "compact"]
"""``official``: the MoRE system prompts; ``compact``: short ones with the same output format (small policies)."""


def routing_system_prompt(experts: Sequence[ExpertSpec] = DEFAULT_EXPERTS, style: PromptStyle = "official") -> str:
    """The routing system prompt listing ``experts`` (the official text for the three default experts)."""
    check_unique(experts)
    if style == "compact":
        guidelines = "".join(f"- {e.name}: {e.guideline}\n" for e in experts)
        return COMPACT_ROUTING_SYSTEM_TEMPLATE.format(names=", ".join(e.name for e in experts), guidelines=guidelines)
    titles = ", ".join(e.title for e in experts)
    guidelines = "".join(f"   - `{e.title}`:\n     - {e.guideline}\n" for e in experts)
    return ROUTING_SYSTEM_TEMPLATE.format(titles=titles, guidelines=guidelines)


def _history_text(question: str, history: Sequence[SubStep]) -> str:
    lines = [f"Origin question: {question}\n"]
    for i, step in enumerate(history, start=1):
        lines.append(f"Sub-question{i}: {step.sub_question}\nAnswer{i}: {step.answer}\n")
    return "".join(lines)


def _images(image: str | None) -> tuple[tuple[str, ...], str]:
    return ((image,), IMAGE_MARKER) if image else ((), "")


def routing_prompt(
    question: str,
    history: Sequence[SubStep] = (),
    image: str | None = None,
    experts: Sequence[ExpertSpec] = DEFAULT_EXPERTS,
    style: PromptStyle = "official",
) -> StepPrompt:
    """The prompt of the next routing step, after the sub-steps in ``history``."""
    images, marker = _images(image)
    system = routing_system_prompt(experts, style)
    return StepPrompt("ret", system, _history_text(question, history) + marker, images)


def sub_answer_prompt(
    sub_question: str,
    passages: Mapping[str, Sequence[Passage]],
    image: str | None = None,
    experts: Sequence[ExpertSpec] = DEFAULT_EXPERTS,
    passages_per_expert: int = 5,
    style: PromptStyle = "official",
) -> StepPrompt:
    """The prompt answering ``sub_question`` from ``passages`` (expert name → ranked passages), top-k per expert."""
    legend = ", ".join(f"`{e.prefix}` means this info is from {e.name}" for e in experts)
    lines = [f"According to the related information searched, {legend}:"]
    for expert in experts:
        for i, passage in enumerate(passages.get(expert.name, ())[:passages_per_expert]):
            lines.append(f"{expert.prefix}-{i}: {passage.text}\n")
    lines.append(f"\n\n Give me the answer(with the format <answer></answer>) to the Question: {sub_question}")
    images, marker = _images(image)
    system = COMPACT_ANSWER_SYSTEM if style == "compact" else SUB_ANSWER_SYSTEM
    return StepPrompt("ans", system, "".join(lines) + marker, images)


def final_answer_prompt(
    question: str, history: Sequence[SubStep], image: str | None = None, style: PromptStyle = "official"
) -> StepPrompt:
    """The prompt asking for the final answer from the question and every sub-question/answer pair."""
    images, marker = _images(image)
    text = _history_text(question, history) + f"Now, give me the final answer of the origin question: {question}"
    system = COMPACT_ANSWER_SYSTEM if style == "compact" else FINAL_ANSWER_SYSTEM
    return StepPrompt("ans", system, text + marker, images)
