"""``engine.sync: weights`` without a server: the adapter merged into the base and saved as the checkpoint the server
reloads (the server's side is in test_vllm_engine.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForImageTextToText

from more_lightning.engines.weight_sync import write_merged_weights
from more_lightning.policy.loading import LoraSettings, PolicyConfig, load_policy

pytestmark = pytest.mark.integration


def test_merged_weights_saved_under_the_checkpoint_names_give_the_adapted_models_outputs(tiny_vl_path, tmp_path):
    """What ``engine.sync: weights`` has the server load: the adapter merged into the base, saved as the base model
    saves itself (a vision-language model's checkpoint names, not its modules'); a fresh model loaded from it
    computes what the LoRA model computes, and the training weights are untouched."""
    model, _ = load_policy(PolicyConfig(model=str(tiny_vl_path), dtype="float32", lora=LoraSettings(dropout=0.0)))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folder = write_merged_weights(model, tmp_path / "merged")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with safe_open(str(folder / "model.safetensors"), "pt") as saved:
        names = set(saved.keys())
    with safe_open(str(tiny_vl_path / "model.safetensors"), "pt") as original:
        assert names == set(original.keys())
    merged = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    tokens = torch.tensor([[1, 5, 9, 14, 20, 31]])
    with torch.no_grad():
        adapted, plain = model(input_ids=tokens).logits, merged(input_ids=tokens).logits
    with torch.no_grad():
        base = model.get_base_model()
        with model.disable_adapter():
            unadapted = base(input_ids=tokens).logits
    assert (adapted - unadapted).abs().max() > 1e-2, "the adapter changes the outputs"
    torch.testing.assert_close(plain, adapted, atol=1e-4, rtol=1e-4)
