"""Greedy completions shared across the systems of one evaluation.

``evaluate`` with several routers runs the same questions with the same policy answering under each router. Many of
their prompts are the same: every system's first routing prompt; the sub-answer prompt of a baseline whose expert is
the one the policy chose (the same sub-question, the same passages); every routing and final prompt after such
steps. Greedy decoding gives a prompt one completion, so :class:`SharedGreedyCompletions` keeps each prompt's and
hands it back to the next system that asks, instead of generating it again. On the demo's seven systems, 2,950 of
5,821 prompts were generated (``docs/demo.md``).

What a system reads is what it would read alone, up to the engine's batching: an engine that batches prompts of
different lengths may round a logit differently with other batch-mates, and so, rarely, pick another greedy token —
with or without sharing. With one prompt per call (``batch_size: 1`` on the HF engine) the two agree exactly
(``tests/test_shared_completions.py``). A shared completion keeps the ``seconds`` of its first generation, so each
system's seconds per question read as if it had generated alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from more_lightning.policy.sampler import SampledGroup, Sampler
from more_lightning.protocol.records import StepPrompt


class SharedGreedyCompletions:
    """A greedy sampler's completions, generated once per distinct prompt and shared by every later request for it.

    Only single completions (``n == 1``, what evaluation asks) are shared; groups pass through. What is kept per
    prompt is what evaluation reads (texts, token ids, prompt length, seconds), not the prompt's pixel values.

    Args:
        sampler: a sampler that decodes greedily (``sampling.greedy``), e.g. ``PolicySampler`` or ``VLLMSampler``.
    """

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.completions: dict[StepPrompt, SampledGroup] = {}
        self.generated = 0
        """Prompts the engine completed."""
        self.shared = 0
        """Prompts answered with a completion already made."""

    @property
    def seed(self) -> int:
        return self.sampler.seed

    @property
    def calls(self) -> int:
        return self.sampler.calls

    def sample(self, prompts: Sequence[StepPrompt], n: int = 1) -> list[SampledGroup]:
        if n != 1:
            return self.sampler.sample(prompts, n)
        missing = list(dict.fromkeys(p for p in prompts if p not in self.completions))
        for prompt, group in zip(missing, self.sampler.sample(missing, 1) if missing else [], strict=True):
            self.completions[prompt] = _kept(group)
        self.generated += len(missing)
        self.shared += len(prompts) - len(missing)
        return [_copy(self.completions[p]) for p in prompts]

    def demonstrate(self, group: SampledGroup, text: str, count: int) -> None:
        self.sampler.demonstrate(group, text, count)

    def summary(self) -> str:
        """``2,950 of 5,821 prompts generated, 2,871 shared across the systems``."""
        total = self.generated + self.shared
        return f"{self.generated:,} of {total:,} prompts generated, {self.shared:,} shared across the systems"


def _kept(group: SampledGroup) -> SampledGroup:
    """``group`` without the prompt inputs evaluation does not read (pixel values: megabytes per image prompt)."""
    inputs = group.prompt_inputs
    return replace(group, prompt_inputs=None if inputs is None else {"input_ids": inputs["input_ids"]})


def _copy(group: SampledGroup) -> SampledGroup:
    """A copy whose lists a reader may change without changing what the next system gets."""
    logprobs = None if group.engine_logprobs is None else list(group.engine_logprobs)
    return replace(group, texts=list(group.texts), completions=list(group.completions), engine_logprobs=logprobs)
