"""The tiny Qwen2.5-VL built offline loads by path like a hub checkpoint, quantised or not, and trains."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from more_lightning.policy.generation import TEXT_ONLY_IMAGE_NOTE, prompt_text
from more_lightning.policy.loading import PolicyConfig, load_policy
from more_lightning.policy.tiny import build_tiny_qwen2_5_vl
from more_lightning.protocol.experts import ExpertSpec
from more_lightning.protocol.prompts import routing_prompt

pytestmark = pytest.mark.integration


def _image_chat_inputs(processor):
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "What colour is the square?"}, {"type": "image"}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>" in prompt
    return processor(text=[prompt], images=[Image.new("RGB", (56, 56), (200, 30, 30))], return_tensors="pt")


def test_saved_folder_loads_with_the_stock_auto_classes(tiny_vl_path):
    processor = AutoProcessor.from_pretrained(tiny_vl_path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_vl_path)
    inputs = _image_chat_inputs(processor)
    image_tokens = (inputs["input_ids"] == model.config.image_token_id).sum().item()
    assert inputs["pixel_values"].shape[0] == 16 and image_tokens == 4  # 56x56 → 4x4 patches → 2x2 merged
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert all(m.in_features % 64 == 0 for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_build_is_deterministic_for_a_seed(tiny_vl_path, tmp_path):
    again = build_tiny_qwen2_5_vl(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json"):
        assert (again / name).read_bytes() == (tiny_vl_path / name).read_bytes()


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_generate_then_train_with_lora(tiny_vl_path, quantization):
    torch.manual_seed(0)
    model, processor = load_policy(PolicyConfig(model=str(tiny_vl_path), quantization=quantization))
    lora_names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert lora_names and all("lora_" in n for n in lora_names)
    assert not any("visual" in n for n in lora_names), "the adapter is on the language model only"
    if quantization == "nf4":
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    inputs = _image_chat_inputs(processor)
    model.eval()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=True)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6
    # the avx512_bf16 repacking workaround: a training forward after generate must work
    model.train()
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("fp32_embeddings", [False, True])
def test_a_quantised_policy_keeps_its_embeddings_in_the_compute_dtype_unless_asked(tiny_vl_path, fp32_embeddings):
    model, processor = load_policy(
        PolicyConfig(model=str(tiny_vl_path), quantization="nf4", fp32_embeddings=fp32_embeddings)
    )
    expected = torch.float32 if fp32_embeddings else torch.bfloat16
    assert model.get_input_embeddings().weight.dtype == expected
    assert model.get_output_embeddings().weight.dtype == expected
    norms = [p.dtype for n, p in model.named_parameters() if n.endswith("norm.weight")]
    assert norms and set(norms) == {torch.float32}, "the norms are upcast as peft's preparation does"
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    inputs = _image_chat_inputs(processor)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.dtype == expected and torch.isfinite(logits).all()


def test_a_text_only_policy_reads_that_an_image_is_attached_where_a_vision_policy_sees_it(tiny_vl_path):
    specs = (ExpertSpec("text image retriever", "tir", "Text Image Retriever", "pictures"),)
    prompt = routing_prompt("Which colour is the shape shown here?", [], "shape.png", specs, "compact")
    text_only = prompt_text(AutoTokenizer.from_pretrained(tiny_vl_path), prompt)
    assert f"Which colour is the shape shown here?\n{TEXT_ONLY_IMAGE_NOTE}" in text_only
    assert "<image>" not in text_only and "<|image_pad|>" not in text_only
    vision = prompt_text(AutoProcessor.from_pretrained(tiny_vl_path), prompt)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in vision and TEXT_ONLY_IMAGE_NOTE not in vision
