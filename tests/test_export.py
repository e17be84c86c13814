"""``export``: a trained adapter (PEFT folder or checkpoint) merged into its base gives the adapted logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForImageTextToText

pytestmark = pytest.mark.integration

IDS = torch.tensor([[5, 17, 42, 99, 7, 3]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def test_export_merges_a_trained_adapter_from_its_folder_and_from_a_checkpoint(fitted_tiny_run, run_cli, tmp_path):
    adapter = fitted_tiny_run / "checkpoints" / "tiny-adapter"
    checkpoint = fitted_tiny_run / "checkpoints" / "tiny" / "last.ckpt"
    for source, name in ((adapter, "from-folder"), (checkpoint, "from-checkpoint")):
        result = run_cli("export", "--adapter", str(source), "--output", name, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "from-folder", dtype=torch.float32)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base = AutoModelForImageTextToText.from_pretrained(_base_of(adapter), dtype=torch.float32)
    plain = _logits(base)
    adapted = _logits(PeftModel.from_pretrained(base, adapter))
    assert not torch.allclose(adapted, plain, atol=1e-4)  # the adapter changed something
    torch.testing.assert_close(_logits(merged), adapted, atol=1e-4, rtol=1e-4)
    from_checkpoint = AutoModelForImageTextToText.from_pretrained(tmp_path / "from-checkpoint", dtype=torch.float32)
    torch.testing.assert_close(_logits(from_checkpoint), adapted, atol=1e-4, rtol=1e-4)
    alone = run_cli(
        "export", "--adapter", str(checkpoint), "--output", "adapter-only", "--merge", "false", cwd=tmp_path
    )
    assert alone.returncode == 0 and (tmp_path / "adapter-only" / "adapter_model.safetensors").is_file()


def _base_of(adapter: Path) -> str:
    import json

    return json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
