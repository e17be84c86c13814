"""The shared-prompt path (each group's prompt encoded once) against the plain path, on real tiny models.

Text prompts of different lengths in one micro-batch (left padding), image+text prompts on the tiny Qwen2.5-VL
(mrope positions, the vision tower once per prompt), a 1-D rope text model, NF4, and LoRA gradients with and without
gradient checkpointing.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from more_lightning.policy.generation import encode_prompts, split_prompt_inputs, tokenizer_of
from more_lightning.policy.loading import LoraSettings, PolicyConfig, load_policy
from more_lightning.policy.shared_prompt import group_token_stats
from more_lightning.protocol.records import StepPrompt

pytestmark = pytest.mark.integration


def _policy(model: str, quantization: str = "none", checkpointing: bool = False):
    config = PolicyConfig(
        model=model,
        quantization=quantization,
        dtype="float32",
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        gradient_checkpointing=checkpointing,
    )
    model, processor = load_policy(config)
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():  # a non-zero adapter, so LoRA-A gradients are not all zero
        if "lora_B" in name:
            parameter.data.normal_(0, 0.1)
    return model, processor


def _groups(processor, prompts: list[StepPrompt], sizes: list[int], seed: int = 0):
    encoded = encode_prompts(processor, prompts)
    prompt_inputs = split_prompt_inputs(encoded, prompts)
    generator = torch.Generator().manual_seed(seed)
    vocab = tokenizer_of(processor).pad_token_id  # completions drawn from ordinary (non-special) tokens
    completions = [
        [
            torch.randint(0, vocab, (int(torch.randint(1, 9, (1,), generator=generator)),), generator=generator)
            for _ in range(n)
        ]
        for n in sizes
    ]
    return prompt_inputs, completions


def _text_prompts():
    return [
        StepPrompt("ret", "Route the question.", "Origin question: who directed the film alien?"),
        StepPrompt("ans", "Answer.", "Question: q?"),
        StepPrompt("ret", "Route.", "Origin question: " + "a much longer question about tables " * 4),
    ]


def _image_prompts(tmp_path):
    paths = []
    for i, size in enumerate([(56, 56), (84, 56)]):
        path = tmp_path / f"image{i}.png"
        Image.new("RGB", size, (40 * i, 120, 200)).save(path)
        paths.append(str(path))
    return [
        StepPrompt("ret", "Route.", "Origin question: what colour is the shape?\n<image>", (paths[0],)),
        StepPrompt("ans", "Answer.", "Question: q?"),
        StepPrompt("ret", "Route.", "Origin question: what is shown here, in a few words?\n<image>", (paths[1],)),
    ]


def _both_paths(model, processor, prompt_inputs, completions):
    pad = tokenizer_of(processor).pad_token_id
    shared = group_token_stats(model, prompt_inputs, completions, pad, shared=True)
    plain = group_token_stats(model, prompt_inputs, completions, pad, shared=False)
    return shared, plain


@pytest.mark.parametrize("images", [False, True], ids=["text", "image+text"])
def test_log_probs_and_entropies_equal_the_plain_path_on_tiny_qwen2_5_vl(tmp_path, images):
    model, processor = _policy("tiny:qwen2.5-vl")
    prompts = _image_prompts(tmp_path) if images else _text_prompts()
    prompt_inputs, completions = _groups(processor, prompts, sizes=[4, 3, 4])
    model.eval()
    with torch.no_grad():
        (lp, ent, mask), (lp_ref, ent_ref, mask_ref) = _both_paths(model, processor, prompt_inputs, completions)
    assert torch.equal(mask, mask_ref)
    assert lp.shape == lp_ref.shape == (11, mask.shape[1])
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ent_ref, atol=1e-5, rtol=0)


def test_the_vision_tower_runs_once_per_prompt(tmp_path):
    model, processor = _policy("tiny:qwen2.5-vl")
    prompt_inputs, completions = _groups(processor, _image_prompts(tmp_path), sizes=[4, 4, 4])
    visual = next(m for name, m in model.named_modules() if name.endswith("visual"))
    seen = []
    handle = visual.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    with torch.no_grad():
        _both_paths(model, processor, prompt_inputs, completions)
    handle.remove()
    patches = sum(p["pixel_values"].shape[0] for p in prompt_inputs if "pixel_values" in p)
    assert seen == [patches, 4 * patches], "shared: each image once; plain: once per completion"


def _tiny_llama(tmp_path) -> str:
    """A 1-D rope text model (the SmolLM2 architecture) built from a config, with the tiny model's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from more_lightning.policy.tiny import tiny_model_path

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    return str(tmp_path / "llama")


def test_log_probs_equal_the_plain_path_on_a_1d_rope_text_model(tmp_path):
    model, processor = _policy(_tiny_llama(tmp_path))
    prompt_inputs, completions = _groups(processor, _text_prompts(), sizes=[3, 5, 2])
    with torch.no_grad():
        (lp, _, _), (lp_ref, _, _) = _both_paths(model.eval(), processor, prompt_inputs, completions)
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=0)


def test_log_probs_equal_the_plain_path_under_nf4():
    model, processor = _policy("tiny:qwen2.5-vl", quantization="nf4")
    prompt_inputs, completions = _groups(processor, _text_prompts(), sizes=[4, 4, 4])
    with torch.no_grad():
        (lp, _, _), (lp_ref, _, _) = _both_paths(model.eval(), processor, prompt_inputs, completions)
    torch.testing.assert_close(lp, lp_ref, atol=1e-4, rtol=0)


def _lora_grads(model, processor, prompt_inputs, completions, shared: bool) -> dict[str, torch.Tensor]:
    model.zero_grad()
    pad = tokenizer_of(processor).pad_token_id
    logprobs, entropy, mask = group_token_stats(model, prompt_inputs, completions, pad, shared=shared)
    weights = torch.linspace(-1, 1, logprobs.shape[0])[:, None]  # a loss that gives every sample its own weight
    ((logprobs * weights).sum() / mask.sum() - 0.01 * (entropy * mask).sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_lora_gradients_equal_the_plain_path(tmp_path, checkpointing):
    model, processor = _policy("tiny:qwen2.5-vl", checkpointing=checkpointing)
    model.train()
    prompt_inputs, completions = _groups(processor, _image_prompts(tmp_path), sizes=[4, 3, 4])
    shared = _lora_grads(model, processor, prompt_inputs, completions, shared=True)
    plain = _lora_grads(model, processor, prompt_inputs, completions, shared=False)
    assert shared.keys() == plain.keys() and len(shared) > 0
    for name, grad in plain.items():
        scale = grad.abs().max().clamp_min(1e-12)
        assert (shared[name] - grad).abs().max() / scale < 1e-4, name
    assert any(g.abs().sum() > 0 for n, g in shared.items() if "lora_A" in n), "the gradient reaches the prompt"


def _sample(model, processor, prompts, n, sampling, shared):
    from more_lightning.policy.generation import sample_completions

    _, completions = sample_completions(model, processor, prompts, n, sampling, generator_seed=3, shared_prefill=shared)
    return [[t.tolist() for t in group] for group in completions]


@pytest.mark.parametrize("images", [False, True], ids=["text", "image+text"])
def test_one_prefill_per_prompt_samples_what_the_plain_generate_samples(tmp_path, images):
    from more_lightning.policy.generation import SamplingConfig

    model, processor = _policy("tiny:qwen2.5-vl")
    model.eval()
    prompts = _image_prompts(tmp_path) if images else _text_prompts()
    sampling = SamplingConfig(max_new_tokens=12, top_k=0)
    shared = _sample(model, processor, prompts, 4, sampling, shared=True)
    plain = _sample(model, processor, prompts, 4, sampling, shared=False)
    assert shared == plain, "same seed, same first-token distribution and cache: the same samples"
    greedy = SamplingConfig(max_new_tokens=12, greedy=True)
    assert _sample(model, processor, prompts, 1, greedy, shared=True) == _sample(
        model, processor, prompts, 1, greedy, False
    )


def test_the_first_token_distribution_from_one_prefill_equals_the_plain_prefill():
    model, processor = _policy("tiny:qwen2.5-vl")
    model.eval()
    encoded = encode_prompts(processor, _text_prompts())
    with torch.no_grad():
        plain = model(**{k: v.repeat_interleave(4, 0) for k, v in encoded.items()}).logits[:, -1]
        prefill = {k: v[:, :-1] for k, v in encoded.items()}
        cache = model(**prefill, use_cache=True).cache
        cache.batch_repeat_interleave(4)
        ids, mask = (encoded[k].repeat_interleave(4, 0) for k in ("input_ids", "attention_mask"))
        shared = model(input_ids=ids[:, -1:], attention_mask=mask, cache=cache).logits[:, -1]
    torch.testing.assert_close(torch.softmax(shared, -1), torch.softmax(plain, -1), atol=1e-6, rtol=0)


def test_models_the_packed_mask_would_be_wrong_for_take_the_plain_path():
    from types import SimpleNamespace

    from more_lightning.policy.shared_prompt import can_share_prompts

    def model(**config):
        return SimpleNamespace(config=SimpleNamespace(**config))

    assert can_share_prompts(model(_attn_implementation="sdpa"))
    assert can_share_prompts(model(_attn_implementation="eager", layer_types=["full_attention"]))
    assert not can_share_prompts(model(_attn_implementation="flash_attention_2"))
    assert not can_share_prompts(model(_attn_implementation="sdpa", layer_types=["sliding_attention"]))
    assert not can_share_prompts(model(_attn_implementation="sdpa", use_sliding_window=True))
