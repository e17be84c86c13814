"""Chunked log-probs and entropies (``policy/token_stats.py``) against the full logits tensor, on real tiny models.

The reference is the computation before chunking: the model's own ``(batch, C, vocab)`` logits, ``.float()``,
``logsumexp`` and the softmax. Chunks of 3 tokens cut every completion in pieces; the plain and the shared-prompt
paths, text and image prompts, NF4, and LoRA gradients (with and without gradient checkpointing) are held to it.
"""

from __future__ import annotations

import pytest
import torch

from more_lightning.policy.generation import collate_sequences, completion_token_stats, tokenizer_of
from more_lightning.policy.shared_prompt import group_token_stats
from tests.test_shared_prompt import _groups, _image_prompts, _policy, _text_prompts

pytestmark = pytest.mark.integration

CHUNK = 3


def _full_logits_stats(model, inputs, mask):
    """Today's path before chunking: every completion position's logits at once."""
    width = mask.shape[1]
    logits = model(**inputs, logits_to_keep=width + 1, use_cache=False).logits[:, :-1].float()
    targets = inputs["input_ids"][:, -width:]
    normaliser = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normaliser
    entropy = normaliser - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logprobs * mask, entropy * mask


def _plain_inputs(processor, prompt_inputs, completions):
    repeated = [prompt for prompt, group in zip(prompt_inputs, completions, strict=True) for _ in group]
    flat = [c for group in completions for c in group]
    return collate_sequences(repeated, flat, tokenizer_of(processor).pad_token_id)


def _case(tmp_path, images: bool, quantization: str = "none"):
    model, processor = _policy("tiny:qwen2.5-vl", quantization=quantization)
    prompts = _image_prompts(tmp_path) if images else _text_prompts()
    prompt_inputs, completions = _groups(processor, prompts, sizes=[4, 3, 4])
    return model, processor, prompt_inputs, completions


@pytest.mark.parametrize("shared", [False, True], ids=["plain", "shared-prompt"])
@pytest.mark.parametrize("images", [False, True], ids=["text", "image+text"])
def test_chunked_log_probs_and_entropies_equal_the_full_logits(tmp_path, images, shared):
    model, processor, prompt_inputs, completions = _case(tmp_path, images)
    inputs, mask = _plain_inputs(processor, prompt_inputs, completions)
    pad = tokenizer_of(processor).pad_token_id
    with torch.no_grad():
        reference = _full_logits_stats(model.eval(), inputs, mask)
        logprobs, entropy, chunked_mask = group_token_stats(
            model, prompt_inputs, completions, pad, shared=shared, chunk_tokens=CHUNK
        )
    assert torch.equal(chunked_mask, mask)
    atol = 1e-5 if shared else 1e-6  # the packed row's attention sums in another order
    torch.testing.assert_close(logprobs, reference[0], atol=atol, rtol=0)
    torch.testing.assert_close(entropy, reference[1], atol=atol, rtol=0)


def test_chunked_log_probs_equal_the_full_logits_under_nf4(tmp_path):
    model, processor, prompt_inputs, completions = _case(tmp_path, images=False, quantization="nf4")
    inputs, mask = _plain_inputs(processor, prompt_inputs, completions)
    with torch.no_grad():
        reference, _ = _full_logits_stats(model.eval(), inputs, mask)
        logprobs, _ = completion_token_stats(model, inputs, mask, with_entropy=False, chunk_tokens=CHUNK)
    torch.testing.assert_close(logprobs, reference, atol=1e-6, rtol=0)


def _lora_grads(model, compute) -> dict[str, torch.Tensor]:
    model.zero_grad()
    logprobs, entropy, mask = compute()
    weights = torch.linspace(-1, 1, logprobs.shape[0])[:, None]  # every sample its own weight
    ((logprobs * weights).sum() / mask.sum() - 0.01 * (entropy * mask).sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_lora_gradients_of_chunked_log_probs_equal_the_full_logits(tmp_path, checkpointing):
    model, processor = _policy("tiny:qwen2.5-vl", checkpointing=checkpointing)
    model.train()
    prompt_inputs, completions = _groups(processor, _image_prompts(tmp_path), sizes=[4, 3, 4])
    inputs, mask = _plain_inputs(processor, prompt_inputs, completions)
    pad = tokenizer_of(processor).pad_token_id
    full = _lora_grads(model, lambda: (*_full_logits_stats(model, inputs, mask), mask))
    chunked = _lora_grads(
        model, lambda: group_token_stats(model, prompt_inputs, completions, pad, shared=False, chunk_tokens=CHUNK)
    )
    assert full.keys() == chunked.keys() and len(full) > 0
    for name, grad in full.items():
        scale = grad.abs().max().clamp_min(1e-12)
        assert (chunked[name] - grad).abs().max() / scale < 1e-5, name


def test_the_head_never_sees_more_than_one_chunk_forward_or_backward(tmp_path):
    model, processor = _policy("tiny:qwen2.5-vl")
    model.train()
    prompt_inputs, completions = _groups(processor, _text_prompts(), sizes=[4, 3, 4])
    pad = tokenizer_of(processor).pad_token_id
    rows = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: rows.append(args[0].shape[:-1].numel())
    )
    logprobs, entropy, mask = group_token_stats(model, prompt_inputs, completions, pad, chunk_tokens=CHUNK)
    forward_calls = len(rows)
    (logprobs.sum() + entropy.sum()).backward()
    handle.remove()
    assert max(rows) <= CHUNK
    assert forward_calls >= mask.numel() // CHUNK, "the completion positions went through the head in chunks"
    assert len(rows) > forward_calls, "the backward pass recomputed the chunks' logits instead of keeping them"


@pytest.mark.parametrize("per_pass, passes", [(None, 2), (1, 3), (8, 1)])
def test_the_rollout_log_prob_passes_run_in_micro_batches_of_groups(per_pass, passes):
    from more_lightning.data.buffer import TrainingGroup
    from more_lightning.policy.loading import LoraSettings, PolicyConfig
    from more_lightning.train.module import MoRELightningModule
    from more_lightning.train.rollout import RolloutCallback
    from more_lightning.train.rollout_phase import Policy

    module = MoRELightningModule(PolicyConfig(dtype="float32", lora=LoraSettings(r=4)), logits_chunk_tokens=CHUNK)
    module.configure_model()
    prompts = _text_prompts()
    prompt_inputs, completions = _groups(module.processor, prompts, sizes=[4, 3, 4])
    groups = [
        TrainingGroup(p, inputs, c, [], torch.zeros(len(c)), torch.zeros(len(c)))
        for p, inputs, c in zip(prompts, prompt_inputs, completions, strict=True)
    ]
    policy = Policy(module.model, module.processor, logits_chunk_tokens=CHUNK)
    forwards = []
    handle = module.model.get_input_embeddings().register_forward_pre_hook(lambda m, args: forwards.append(1))
    logprobs = RolloutCallback(logprob_groups=per_pass)._token_logprobs(policy, groups, False, groups_per_batch=2)
    handle.remove()
    assert len(forwards) == passes
    for mine, together in zip(
        logprobs, RolloutCallback(logprob_groups=3)._token_logprobs(policy, groups, False, 2), strict=True
    ):
        torch.testing.assert_close(mine, together, atol=1e-5, rtol=0)
