"""Sampling completions from the policy and scoring their tokens (log-probs and entropy).

Layout (as TRL's): a batch is ``[prompt, left-padded to P | completion, right-padded to C]``, so every completion
starts at column ``P`` and the forward pass only needs the last ``C + 1`` positions (``logits_to_keep``) — the
``(batch, length, vocab)`` tensor is never built for the prompt part, nor the ``(batch, C, vocab)`` one for the
completions (their logits are computed in chunks, ``token_stats.py``). Vision-language prompts carry their processor
outputs (``pixel_values``, ``image_grid_thw``, ...) alongside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from more_lightning.errors import SettingError, check_ranges
from more_lightning.policy.token_stats import DEFAULT_CHUNK_TOKENS, chunked_token_stats, head_inputs
from more_lightning.protocol.records import StepPrompt

TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")
"""Per-token processor outputs, padded with the prompt; everything else (pixel values, grids) is per image."""


@dataclass
class SamplingConfig:
    """How completions are sampled during rollouts (and evaluation)."""

    temperature: float = 1.0
    """Softmax temperature (official MoRE: 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = 20
    """Sample among the k most likely tokens (official MoRE: 20); 0 disables."""
    max_new_tokens: int = 256
    """Longest completion."""
    greedy: bool = False
    """Greedy decoding instead of sampling (for reproducible evaluation)."""

    def __post_init__(self) -> None:
        check_ranges(
            "sampling",
            {
                "temperature": (self.temperature, self.greedy or self.temperature > 0, "> 0 when sampling (or greedy)"),
                "top_p": (self.top_p, 0 < self.top_p <= 1, "in (0, 1]"),
                "top_k": (self.top_k, self.top_k >= 0, ">= 0 (0 disables)"),
                "max_new_tokens": (self.max_new_tokens, self.max_new_tokens >= 1, ">= 1"),
            },
        )


def is_vision_processor(processor) -> bool:
    return hasattr(processor, "image_processor")


def tokenizer_of(processor):
    return getattr(processor, "tokenizer", processor)


TEXT_ONLY_IMAGE_NOTE = "[an image is attached]"
"""What a text-only policy reads where its prompt holds an image. It cannot see the image (the experts get it), but it
knows there is one: "Which colour is the shape shown here?" can be routed to the text-image expert by that alone."""


def prompt_text(processor, prompt: StepPrompt) -> str:
    """The chat-formatted prompt text, ending with the assistant header. A text-only policy reads
    :data:`TEXT_ONLY_IMAGE_NOTE` in place of each image."""
    messages = prompt.messages()
    if not is_vision_processor(processor):
        messages = [
            {"role": m["role"], "content": "".join(c.get("text", TEXT_ONLY_IMAGE_NOTE) for c in m["content"])}
            for m in messages
        ]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def load_image(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def encode_prompts(processor, prompts: Sequence[StepPrompt]) -> dict[str, torch.Tensor]:
    """Processor outputs for ``prompts``, left-padded into one batch."""
    texts = [prompt_text(processor, p) for p in prompts]
    if is_vision_processor(processor):
        images = [load_image(path) for p in prompts for path in p.images]
        encoded = processor(text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt")
    else:
        encoded = processor(texts, padding=True, padding_side="left", return_tensors="pt")
    return dict(encoded)


def split_prompt_inputs(encoded: dict[str, torch.Tensor], prompts: Sequence[StepPrompt]) -> list[dict]:
    """One unpadded input dict per prompt, from a left-padded batch (images assigned in order)."""
    pieces = []
    patch_start, image_start = 0, 0
    grids = encoded.get("image_grid_thw")
    for row, prompt in enumerate(prompts):
        keep = encoded["attention_mask"][row].bool()
        piece = {k: encoded[k][row][keep].unsqueeze(0) for k in TOKEN_KEYS if k in encoded}
        if prompt.image_count and grids is not None:
            my_grids = grids[image_start : image_start + prompt.image_count]
            patches = int(my_grids.prod(dim=-1).sum())
            piece["image_grid_thw"] = my_grids
            piece["pixel_values"] = encoded["pixel_values"][patch_start : patch_start + patches]
            patch_start += patches
            image_start += prompt.image_count
        pieces.append(piece)
    return pieces


def collate_sequences(
    prompt_inputs: Sequence[dict], completions: Sequence[torch.Tensor], pad_id: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Model inputs for (prompt, completion) pairs and the completion mask ``(batch, C)``.

    ``prompt_inputs[i]`` is an unpadded prompt dict; ``completions[i]`` its completion token ids (1-D).
    """
    prompt_len = max(p["input_ids"].shape[1] for p in prompt_inputs)
    completion_len = max(1, max(len(c) for c in completions))
    batch = len(prompt_inputs)
    ids = torch.full((batch, prompt_len + completion_len), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    token_types = torch.zeros_like(ids) if "mm_token_type_ids" in prompt_inputs[0] else None
    completion_mask = torch.zeros((batch, completion_len), dtype=torch.float32)
    for i, (prompt, completion) in enumerate(zip(prompt_inputs, completions, strict=True)):
        p = prompt["input_ids"].shape[1]
        ids[i, prompt_len - p : prompt_len] = prompt["input_ids"][0]
        attention[i, prompt_len - p : prompt_len] = 1
        if token_types is not None:
            token_types[i, prompt_len - p : prompt_len] = prompt["mm_token_type_ids"][0]
        ids[i, prompt_len : prompt_len + len(completion)] = completion
        attention[i, prompt_len : prompt_len + len(completion)] = 1
        completion_mask[i, : len(completion)] = 1.0
    inputs = {"input_ids": ids, "attention_mask": attention}
    if token_types is not None:
        inputs["mm_token_type_ids"] = token_types
    return with_image_inputs(inputs, prompt_inputs), completion_mask


def with_image_inputs(inputs: dict[str, torch.Tensor], prompt_inputs: Sequence[dict]) -> dict[str, torch.Tensor]:
    """``inputs`` plus the pixel values and grids of the prompts that have images, in prompt order."""
    with_images = [p for p in prompt_inputs if "pixel_values" in p]
    if with_images:
        inputs["pixel_values"] = torch.cat([p["pixel_values"] for p in with_images])
        inputs["image_grid_thw"] = torch.cat([p["image_grid_thw"] for p in with_images])
    return inputs


def completion_token_stats(
    model,
    inputs: dict[str, torch.Tensor],
    completion_mask: torch.Tensor,
    with_entropy: bool = True,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs ``(batch, C)`` of the completion tokens, and their entropies if asked (the logits of
    ``chunk_tokens`` tokens at a time, ``token_stats.py``)."""
    completion_len = completion_mask.shape[1]
    device = next(p for p in model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    head, hidden = head_inputs(model, inputs, completion_len + 1)
    targets = inputs["input_ids"][:, -completion_len:]
    logprobs, entropy = chunked_token_stats(head, hidden[:, :-1], targets, with_entropy, chunk_tokens)
    mask = completion_mask.to(logprobs.device)
    return logprobs * mask, (entropy * mask if entropy is not None else None)


VISION_PLACEHOLDERS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def vision_placeholder_ids(model) -> list[int]:
    """Token ids that stand for image/video inputs: a completion must never contain them (the next forward pass
    would look for image features that are not there)."""
    config = getattr(model, "config", None)
    return sorted({getattr(config, name) for name in VISION_PLACEHOLDERS if getattr(config, name, None) is not None})


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokens that end a completion: the generation config's end-of-turn id(s) first, then the tokenizer's EOS."""
    configured = model.generation_config.eos_token_id
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    return list(dict.fromkeys([*ids, tokenizer.eos_token_id]))


def demonstration_tokens(model, processor, text: str) -> torch.Tensor:
    """``text`` as completion tokens, ended by the stop token the model would write (a teacher demonstration)."""
    tokenizer = tokenizer_of(processor)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor([*ids, stop_token_ids(model, tokenizer)[0]], dtype=torch.long)


def trim_completion(tokens: torch.Tensor, stop_ids: set[int], pad_id: int) -> torch.Tensor:
    """Completion tokens up to and including the first stop token; trailing padding removed."""
    for position, token in enumerate(tokens.tolist()):
        if token in stop_ids:
            return tokens[: position + 1]
    keep = tokens != pad_id
    return tokens[: int(keep.nonzero().max()) + 1] if keep.any() else tokens[:0]


def _generate_from_one_prefill(model, inputs: dict[str, torch.Tensor], n: int, options: dict) -> torch.Tensor:
    """``generate`` with ``n`` samples per prompt from one prefill per prompt.

    ``generate`` with ``num_return_sequences = n`` copies every prompt ``n`` times before the prefill. Here the
    prompts but their last token are prefilled once (images included: the vision tower runs once per prompt, and
    Qwen2.5-VL keeps the prompts' rope offsets for the decoding steps), the cache is repeated ``n`` times, and
    ``generate`` decodes from the last prompt token on: the same computation on the same positions.
    """
    prefill = {k: (v[:, :-1] if k in TOKEN_KEYS else v) for k, v in inputs.items()}
    cache = model(**prefill, use_cache=True, logits_to_keep=1).cache
    cache.batch_repeat_interleave(n)
    for module in model.modules():  # Qwen2/2.5-VL: the prompts' mrope offsets, one per row, follow the cache
        deltas = getattr(module, "rope_deltas", None)
        if isinstance(deltas, torch.Tensor) and deltas.shape[0] == inputs["input_ids"].shape[0]:
            module.rope_deltas = deltas.repeat_interleave(n, dim=0)
    tokens = {k: inputs[k].repeat_interleave(n, dim=0) for k in TOKEN_KEYS if k in inputs}
    return model.generate(**tokens, cache=cache, **{**options, "num_return_sequences": 1})


@torch.no_grad()
def sample_completions(
    model,
    processor,
    prompts: Sequence[StepPrompt],
    n: int,
    sampling: SamplingConfig,
    generator_seed: int | None = None,
    synced: bool = False,
    shared_prefill: bool = True,
) -> tuple[list[dict], list[list[torch.Tensor]]]:
    """Sample ``n`` completions for each prompt in one ``generate`` call (``synced``: ranks step together;
    ``shared_prefill``: each prompt is prefilled once, not ``n`` times).

    Returns the unpadded prompt inputs (one dict per prompt) and, per prompt, its ``n`` completion token tensors.
    """
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    encoded = encode_prompts(processor, prompts)
    tokenizer = tokenizer_of(processor)
    device = next(p for p in model.parameters()).device
    options = {
        "max_new_tokens": sampling.max_new_tokens,
        "num_return_sequences": n,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if synced:
        options["synced_gpus"] = True  # HF's name; it keeps sharded ranks in step on any device
    placeholders = vision_placeholder_ids(model)
    if placeholders:
        options["suppress_tokens"] = placeholders
    if sampling.greedy:
        if n > 1:
            raise SettingError("greedy decoding gives n identical completions; sample (greedy: false) for groups")
        options["do_sample"] = False
    else:
        options.update(
            do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None
        )
    inputs = {k: v.to(device) for k, v in encoded.items()}
    if shared_prefill and n > 1:
        output = _generate_from_one_prefill(model, inputs, n, options).cpu()
    else:
        output = model.generate(**inputs, **options).cpu()
    prompt_len = encoded["input_ids"].shape[1]
    stop_ids = set(stop_token_ids(model, tokenizer))
    completions = [trim_completion(row[prompt_len:], stop_ids, tokenizer.pad_token_id) for row in output]
    grouped = [completions[i * n : (i + 1) * n] for i in range(len(prompts))]
    return split_prompt_inputs(encoded, prompts), grouped
