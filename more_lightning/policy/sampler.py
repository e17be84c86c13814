"""The sampler interface episodes and rollouts call to get completions of step prompts, and ``PolicySampler``, the HF
engine (``model.generate`` in this process). The vLLM engine's ``engines.vllm_sampler.VLLMSampler`` is the other."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from more_lightning.policy.generation import SamplingConfig, demonstration_tokens, sample_completions, tokenizer_of
from more_lightning.protocol.records import StepPrompt


@dataclass
class SampledGroup:
    """The completions of one prompt: texts, and (for a real policy) the tokens a training step needs. Made by a
    :class:`Sampler` (``sample``); read by the episode runner (a ``RewardedGroup`` once scored) and the rollout (a
    ``TrainingGroup`` once scored)."""

    prompt: StepPrompt
    texts: list[str]
    prompt_inputs: dict[str, torch.Tensor] | None = None
    completions: list[torch.Tensor] = field(default_factory=list)
    demonstrations: int = 0
    """The last ``demonstrations`` completions are teacher demonstrations, not samples."""
    engine_logprobs: list[torch.Tensor] | None = None
    """Per completion, the sampled tokens' log-probs under the engine's weights (vLLM; NaN for demonstrations);
    ``None`` when the engine is the trainer's own model (HF)."""
    seconds: float = 0.0
    """What generating this prompt's completions took: its share of the engine call that made them (a call of ``k``
    prompts that took ``t`` seconds gives each ``t / k``). The episode runner charges it to the episode."""

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the prompt as the policy's processor encodes it (both engines encode with the same
        ``encode_prompts``, so they count alike); 0 where the sampler does not tokenize."""
        return 0 if self.prompt_inputs is None else int(self.prompt_inputs["input_ids"].shape[-1])


class Sampler(Protocol):
    """What an engine offers the episode runner and the rollout: ``n`` completions per step prompt."""

    seed: int
    """Base seed: the same seed and call order give the same completions."""
    calls: int
    """Calls so far (each call's seed derives from ``seed`` and it)."""

    def sample(self, prompts: Sequence[StepPrompt], n: int = 1) -> list[SampledGroup]: ...

    def demonstrate(self, group: SampledGroup, text: str, count: int) -> None: ...


def replace_with_demonstration(model, processor, group: SampledGroup, text: str, count: int) -> None:
    """Put the teacher demonstration ``text`` in place of the last ``count`` samples of ``group``."""
    if not 0 < count < len(group.texts):
        raise ValueError(f"{count} demonstrations must leave a sample in a group of {len(group.texts)}")
    tokens = demonstration_tokens(model, processor, text)
    keep = len(group.texts) - count
    group.texts[keep:] = [text] * count
    if group.completions:
        group.completions[keep:] = [tokens.clone() for _ in range(count)]
    group.demonstrations = count
    if group.engine_logprobs is not None:
        group.engine_logprobs[keep:] = [torch.full((len(tokens),), float("nan")) for _ in range(count)]


class PolicySampler:
    """Samples completions from a (LoRA) policy, in eval mode with no grad, ``batch_prompts`` prompts per call.

    Args:
        model: the HF model (a PEFT model while training).
        processor: its processor or tokenizer.
        sampling: decoding settings (``greedy`` for evaluation).
        batch_prompts: prompts per ``generate`` call.
        seed: base seed; call ``i`` uses ``seed + i`` so runs are reproducible.
        synced: every rank runs each decoding step together (sharded weights: each forward is a collective).
        shared_prefill: prefill each prompt once and decode its ``n`` samples from the repeated cache.
    """

    def __init__(
        self,
        model,
        processor,
        sampling: SamplingConfig,
        batch_prompts: int = 8,
        seed: int = 0,
        synced: bool = False,
        shared_prefill: bool = True,
    ) -> None:
        self.model = model
        self.synced = synced
        self.shared_prefill = shared_prefill
        self.processor = processor
        self.sampling = sampling
        self.batch_prompts = batch_prompts
        self.seed = seed
        self.calls = 0

    def sample(self, prompts: Sequence[StepPrompt], n: int = 1) -> list[SampledGroup]:
        tokenizer = tokenizer_of(self.processor)
        was_training = self.model.training
        self.model.eval()
        groups: list[SampledGroup] = []
        try:
            for start in range(0, len(prompts), self.batch_prompts):
                chunk = list(prompts[start : start + self.batch_prompts])
                began = time.perf_counter()
                inputs, completions = sample_completions(
                    self.model,
                    self.processor,
                    chunk,
                    n,
                    self.sampling,
                    generator_seed=self.seed + self.calls,
                    synced=self.synced,
                    shared_prefill=self.shared_prefill,
                )
                self.calls += 1
                share = (time.perf_counter() - began) / len(chunk)
                for prompt, prompt_inputs, tokens in zip(chunk, inputs, completions, strict=True):
                    texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
                    groups.append(SampledGroup(prompt, texts, prompt_inputs, list(tokens), seconds=share))
        finally:
            self.model.train(was_training)
        return groups

    def demonstrate(self, group: SampledGroup, text: str, count: int) -> None:
        """Put the teacher demonstration ``text`` in place of the last ``count`` samples of ``group``."""
        replace_with_demonstration(self.model, self.processor, group, text, count)
