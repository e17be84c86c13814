"""``VLLMSampler``: step prompts → ``n`` completions each, sampled by a vLLM server (the interface of
``policy.sampler.PolicySampler``, so the episode runner and the rollout do not know which engine they use).

Every prompt is one request, all in flight at once, so the server batches them continuously and shares each prompt's
KV cache among its ``n`` samples (prefix caching). Request ``i`` of call ``c`` is seeded ``seed + c·100003 + i``:
the same seed gives the same completions. The prompt inputs the trainer needs (token ids, pixel values) are encoded
here by the same processor as the HF path; the completions come back as token ids, each with its sampled-token
log-prob under the server's weights (``SampledGroup.engine_logprobs``).
"""

from __future__ import annotations

import base64
import io
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import torch

from more_lightning.engines.vllm_engine import EngineRefused, VLLMEngine
from more_lightning.errors import SettingError
from more_lightning.policy.generation import (
    SamplingConfig,
    encode_prompts,
    is_vision_processor,
    load_image,
    split_prompt_inputs,
    stop_token_ids,
    tokenizer_of,
    vision_placeholder_ids,
)
from more_lightning.policy.sampler import SampledGroup, replace_with_demonstration
from more_lightning.protocol.records import StepPrompt

MAX_IN_FLIGHT = 64
"""Requests sent at once (the server queues and batches them)."""


def model_facts(model_path: str) -> SimpleNamespace:
    """What sampling needs of a model without loading its weights: its config and generation config."""
    from transformers import AutoConfig, GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(model_path)
    except OSError:
        generation = GenerationConfig()
    return SimpleNamespace(config=AutoConfig.from_pretrained(model_path), generation_config=generation)


def _image_url(path: str) -> str:
    buffer = io.BytesIO()
    load_image(path).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat_messages(prompt: StepPrompt) -> list[dict]:
    """The prompt's chat messages in the OpenAI format, images as data URLs in order."""
    images = iter(prompt.images)
    messages = []
    for message in prompt.messages():
        content = []
        for item in message["content"]:
            if item["type"] == "image":
                content.append({"type": "image_url", "image_url": {"url": _image_url(next(images))}})
            else:
                content.append(item)
        messages.append({"role": message["role"], "content": content})
    return messages


def _token_id(token: str) -> int:
    if not token.startswith("token_id:"):
        raise EngineRefused(f"the vLLM server returned the token {token!r}, not an id: is it older than 0.6?")
    return int(token.removeprefix("token_id:"))


def parse_choice(choice: dict) -> tuple[list[int], list[float]]:
    """Token ids and sampled-token log-probs of one choice of a completions or chat answer."""
    logprobs = choice.get("logprobs") or {}
    if "content" in logprobs:  # chat
        entries = logprobs["content"] or []
        return [_token_id(e["token"]) for e in entries], [float(e["logprob"]) for e in entries]
    tokens, values = logprobs.get("tokens") or [], logprobs.get("token_logprobs") or []
    return [_token_id(t) for t in tokens], [float(v) if v is not None else math.nan for v in values]


class VLLMSampler:
    """Samples completions of step prompts from a :class:`VLLMEngine`.

    Args:
        engine: the server (and the adapter it serves).
        processor: the policy's processor or tokenizer (encodes prompts, decodes completions).
        model: the policy model, or its :func:`model_facts` (stop tokens, vision placeholders).
        sampling: decoding settings.
        seed: base seed (see the module docstring).
    """

    def __init__(self, engine: VLLMEngine, processor, model, sampling: SamplingConfig, seed: int = 0) -> None:
        self.engine = engine
        self.processor = processor
        self.model = model
        self.sampling = sampling
        self.seed = seed
        self.calls = 0
        tokenizer = tokenizer_of(processor)
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.suppressed = vision_placeholder_ids(model)

    def _parameters(self, n: int, seed: int) -> dict:
        sampling = self.sampling
        if sampling.greedy and n > 1:
            raise SettingError("greedy decoding gives n identical completions; sample (greedy: false) for groups")
        parameters = {
            "model": self.engine.model_name,
            "n": n,
            "max_tokens": sampling.max_new_tokens,
            "seed": seed,
            "stop_token_ids": self.stop_ids,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
        }
        if sampling.greedy:
            parameters["temperature"] = 0.0
        else:
            parameters.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or -1)
        if self.suppressed:
            parameters["logit_bias"] = {str(token): -100 for token in self.suppressed}
        return parameters

    def _request(self, prompt: StepPrompt, inputs: dict, n: int, seed: int) -> list[dict]:
        parameters = self._parameters(n, seed)
        if prompt.image_count and is_vision_processor(self.processor):
            payload = {**parameters, "messages": chat_messages(prompt), "logprobs": True, "top_logprobs": 0}
            answer = self.engine.post("/v1/chat/completions", payload)
        else:
            payload = {**parameters, "prompt": inputs["input_ids"][0].tolist(), "logprobs": 0}
            answer = self.engine.post("/v1/completions", payload)
        return sorted(answer["choices"], key=lambda c: c["index"])

    def sample(self, prompts: Sequence[StepPrompt], n: int = 1) -> list[SampledGroup]:
        prompts = list(prompts)
        if not prompts:
            return []
        began = time.perf_counter()
        inputs = split_prompt_inputs(encode_prompts(self.processor, prompts), prompts)
        base = self.seed + self.calls * 100_003
        self.calls += 1
        with ThreadPoolExecutor(min(MAX_IN_FLIGHT, len(prompts))) as pool:
            answers = list(pool.map(lambda i: self._request(prompts[i], inputs[i], n, base + i), range(len(prompts))))
        tokenizer = tokenizer_of(self.processor)
        share = (time.perf_counter() - began) / len(prompts)
        groups = []
        for prompt, prompt_inputs, choices in zip(prompts, inputs, answers, strict=True):
            parsed = [parse_choice(c) for c in choices]
            completions = [torch.tensor(ids, dtype=torch.long) for ids, _ in parsed]
            logprobs = [torch.tensor(values, dtype=torch.float32) for _, values in parsed]
            texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
            groups.append(
                SampledGroup(prompt, texts, prompt_inputs, completions, engine_logprobs=logprobs, seconds=share)
            )
        return groups

    def demonstrate(self, group: SampledGroup, text: str, count: int) -> None:
        """Put the teacher demonstration ``text`` in place of the last ``count`` samples of ``group`` (the engine
        did not sample them: their engine log-probs are NaN)."""
        replace_with_demonstration(self.model, self.processor, group, text, count)
