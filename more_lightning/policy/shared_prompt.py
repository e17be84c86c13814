"""Token log-probs of Step-GRPO groups with each group's prompt encoded once (a shared-prefix attention mask).

A group is ``n`` completions of one step prompt. The plain path (:func:`generation.completion_token_stats` over
:func:`generation.collate_sequences`) encodes the prompt ``n`` times. Here each group is **one packed row**::

    [left padding | prompt (P) | completion 1 (C) | completion 2 (C) | ... | completion n (C)]

with a 4-D attention mask: prompt tokens attend causally to the prompt; completion ``i`` attends to the whole prompt
and causally to itself, never to the other completions. Each completion's positions continue from the prompt's last
position, as if it followed the prompt alone — for Qwen2.5-VL's mrope that is the prompt's largest rope position + 1
(not its token count), and the prompt's own 3-D positions come from the model's ``get_rope_index``. Images are in
the row once, so the vision tower runs once per prompt. The first completion token is predicted from the prompt's
last position, shared by the ``n`` completions.

The gradient reaches the prompt tokens through their keys and values (there is no cache: one ordinary forward pass),
so it works with gradient checkpointing, LoRA/NF4, SDPA and eager attention. For n = 8, P = 700, C = 64 a group is
1,212 tokens instead of 6,112. ``tests/test_shared_prompt.py`` holds it to the plain path (log-probs within 1e-5,
LoRA gradients within 1e-4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from more_lightning.policy.generation import collate_sequences, completion_token_stats, with_image_inputs
from more_lightning.policy.token_stats import DEFAULT_CHUNK_TOKENS, chunked_token_stats, head_inputs

PAD, PROMPT = -1, 0
"""Segment ids of a packed row; completion ``i`` is segment ``i + 1``."""


def rope_index_module(model) -> torch.nn.Module | None:
    """The sub-module with ``get_rope_index`` (Qwen2/2.5-VL's 3-D mrope), or ``None`` for 1-D rope models."""
    for module in model.modules():
        if callable(getattr(module, "get_rope_index", None)):
            return module
    return None


def _prompt_positions(prompt: dict, rope) -> torch.Tensor:
    """``(3, P)`` mrope positions (or ``(1, P)`` 1-D positions) of one unpadded prompt."""
    length = prompt["input_ids"].shape[1]
    if rope is None:
        return torch.arange(length).unsqueeze(0)
    if prompt.get("image_grid_thw") is None:
        return torch.arange(length).expand(3, length)
    device = next(rope.parameters()).device
    positions, _ = rope.get_rope_index(
        prompt["input_ids"].to(device),
        mm_token_type_ids=prompt["mm_token_type_ids"].to(device),
        image_grid_thw=prompt["image_grid_thw"].to(device),
        attention_mask=torch.ones_like(prompt["input_ids"]).to(device),
    )
    return positions[:, 0].cpu()


def activation_dtype(model) -> torch.dtype:
    """The dtype of the decoder's activations (an SDPA mask must have the queries' dtype): the norms' — fp32 in a
    quantised policy, whose embeddings stay 16-bit (``loading.prepare_quantized``) — else the embeddings'."""
    norms = (p.dtype for name, p in model.named_parameters() if name.endswith("norm.weight"))
    return next(norms, model.get_input_embeddings().weight.dtype)


@dataclass
class PackedGroups:
    """Model inputs of packed groups and where each sample's completion sits."""

    inputs: dict[str, torch.Tensor]
    slots: int
    """Completion slots per row (the largest group size)."""
    width: int
    """Tokens per completion slot (the longest completion)."""
    rows: list[tuple[int, int]]
    """Per sample, in group order: (row, slot)."""
    completion_mask: torch.Tensor
    """``(samples, width)``: 1 on completion tokens."""


def pack_groups(
    prompt_inputs: Sequence[dict], completions: Sequence[Sequence[torch.Tensor]], pad_id: int, model
) -> PackedGroups:
    """One packed row per group (see the module docstring). ``prompt_inputs[g]``: group ``g``'s unpadded prompt."""
    rope = rope_index_module(model)
    mask_dtype = activation_dtype(model)
    slots = max(len(c) for c in completions)
    width = max(1, max(len(t) for group in completions for t in group))
    tail = slots * width
    length = max(p["input_ids"].shape[1] for p in prompt_inputs) + tail
    batch = len(prompt_inputs)
    ids = torch.full((batch, length), pad_id, dtype=torch.long)
    segments = torch.full((batch, length), PAD, dtype=torch.long)
    dims = 1 if rope is None else 3
    positions = torch.zeros((dims, batch, length), dtype=torch.long)
    token_types = torch.zeros_like(ids) if "mm_token_type_ids" in prompt_inputs[0] else None
    rows, mask_rows = [], []
    for row, (prompt, group) in enumerate(zip(prompt_inputs, completions, strict=True)):
        p = prompt["input_ids"].shape[1]
        start = length - tail - p
        ids[row, start : start + p] = prompt["input_ids"][0]
        segments[row, start : start + p] = PROMPT
        prompt_positions = _prompt_positions(prompt, rope)
        positions[:, row, start : start + p] = prompt_positions
        if token_types is not None:
            token_types[row, start : start + p] = prompt["mm_token_type_ids"][0]
        following = int(prompt_positions.max()) + 1 + torch.arange(width)
        for slot, tokens in enumerate(group):
            begin = length - tail + slot * width
            ids[row, begin : begin + len(tokens)] = tokens
            segments[row, begin : begin + width] = slot + 1
            positions[:, row, begin : begin + width] = following
            mask = torch.zeros(width)
            mask[: len(tokens)] = 1.0
            rows.append((row, slot))
            mask_rows.append(mask)
    query, key = segments.unsqueeze(2), segments.unsqueeze(1)
    causal = torch.ones((length, length), dtype=torch.bool).tril()
    allowed = causal & (((key == PROMPT) & (query >= PROMPT)) | ((query == key) & (query > PROMPT)))
    allowed |= torch.eye(length, dtype=torch.bool)  # padding attends to itself (no empty softmax rows)
    attention = torch.zeros(allowed.shape, dtype=mask_dtype).masked_fill(~allowed, torch.finfo(mask_dtype).min)
    inputs = {
        "input_ids": ids,
        "attention_mask": attention.unsqueeze(1),
        "position_ids": positions if rope is not None else positions[0],
    }
    if token_types is not None:
        inputs["mm_token_type_ids"] = token_types
    return PackedGroups(with_image_inputs(inputs, prompt_inputs), slots, width, rows, torch.stack(mask_rows))


def shared_prompt_token_stats(
    model, packed: PackedGroups, with_entropy: bool = True, chunk_tokens: int = DEFAULT_CHUNK_TOKENS
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs ``(samples, width)`` of every completion (and entropies), one forward pass per batch; the
    logits of ``chunk_tokens`` tokens at a time (``token_stats.py``)."""
    device = model.get_input_embeddings().weight.device
    inputs = {k: v.to(device) for k, v in packed.inputs.items()}
    tail = packed.slots * packed.width
    head, hidden = head_inputs(model, inputs, tail + 1)  # (rows, 1 + tail, hidden)
    rows = torch.tensor([r for r, _ in packed.rows], device=device)
    slots = torch.tensor([s for _, s in packed.rows], device=device)
    # the positions that predict slot s: the prompt's last position, then the slot's own positions but its last
    offsets = 1 + slots[:, None] * packed.width + torch.arange(packed.width - 1, device=device)[None, :]
    columns = torch.cat([torch.zeros_like(slots)[:, None], offsets], dim=1)
    predicting = hidden[rows[:, None], columns]  # (samples, width, hidden)
    targets = inputs["input_ids"][:, -tail:].reshape(len(inputs["input_ids"]), packed.slots, packed.width)[rows, slots]
    logprobs, entropy = chunked_token_stats(head, predicting, targets, with_entropy, chunk_tokens)
    mask = packed.completion_mask.to(device)
    return logprobs * mask, (entropy * mask if entropy is not None else None)


MASKED_ATTENTION = ("sdpa", "eager")
"""Attention implementations that take the 4-D shared-prefix mask as given (FlashAttention-2 would ignore it)."""


def can_share_prompts(model) -> bool:
    """Whether the packed path is exact for ``model``: an attention that honours a 4-D mask, and no sliding window
    (the packed mask does not encode one)."""
    config = model.config
    text = getattr(config, "text_config", None) or config
    attention = getattr(config, "_attn_implementation", None) or getattr(text, "_attn_implementation", None)
    sliding = "sliding_attention" in (getattr(text, "layer_types", None) or ()) or getattr(
        text, "use_sliding_window", False
    )
    return attention in MASKED_ATTENTION and not sliding


def group_token_stats(
    model,
    prompt_inputs: Sequence[dict],
    completions: Sequence[Sequence[torch.Tensor]],
    pad_id: int,
    shared: bool = True,
    with_entropy: bool = True,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Log-probs, entropies and the completion mask, ``(samples, C)`` in group order, of groups given as their
    prompts and completions: each prompt encoded once (``shared``, where :func:`can_share_prompts`) or once per
    completion (the plain path); the logits of ``chunk_tokens`` tokens at a time."""
    if shared and can_share_prompts(model):
        packed = pack_groups(prompt_inputs, completions, pad_id, model)
        logprobs, entropy = shared_prompt_token_stats(model, packed, with_entropy, chunk_tokens)
        return logprobs, entropy, packed.completion_mask
    repeated = [prompt for prompt, group in zip(prompt_inputs, completions, strict=True) for _ in group]
    inputs, mask = collate_sequences(repeated, [c for group in completions for c in group], pad_id)
    logprobs, entropy = completion_token_stats(model, inputs, mask, with_entropy, chunk_tokens)
    return logprobs, entropy, mask
