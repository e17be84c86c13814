"""``export --output``: a non-empty folder is refused unless ``--overwrite`` (then cleared, so two exports never mix),
and a folder that cannot be written is one error line, both before any model loads."""

from __future__ import annotations

import errno
import tempfile

import pytest

from more_lightning import cli

pytestmark = pytest.mark.integration


def _adapter(folder, seed: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from more_lightning.policy.tiny import tiny_model_path

    base = AutoModelForImageTextToText.from_pretrained(tiny_model_path())
    config = LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    torch.manual_seed(seed)
    get_peft_model(base, config).save_pretrained(folder)
    return folder


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


def test_a_non_empty_output_is_refused_before_loading_and_overwrite_clears_it(tmp_path, capsys, monkeypatch):
    from more_lightning.ops import export

    output = tmp_path / "out"
    output.mkdir()
    (output / "adapter_model.safetensors").write_text("an older export")
    monkeypatch.setattr(export, "load_trained_policy", lambda *_: pytest.fail("loaded before checking --output"))
    assert cli.main(["export", "--adapter", str(tmp_path / "any"), "--output", str(output)]) == 2
    err = _error(capsys)
    assert f"error: --output {output} is not empty" in err and "--overwrite true" in err
    monkeypatch.undo()

    adapter = _adapter(tmp_path / "adapter", seed=1)
    (output / "stale.bin").write_text("left by the older export")
    args = ["export", "--adapter", str(adapter), "--output", str(output), "--merge", "false", "--overwrite", "true"]
    assert cli.main(args) == 0
    assert not (output / "stale.bin").exists()
    assert (output / "adapter_config.json").is_file()


def test_an_unwritable_output_is_one_error_line(tmp_path, capsys, monkeypatch):
    def read_only(*_, **__):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    assert cli.main(["export", "--adapter", str(tmp_path / "any"), "--output", str(tmp_path / "ro")]) == 2
    assert f"error: --output {tmp_path / 'ro'}: cannot write there (Read-only file system)" in _error(capsys)
