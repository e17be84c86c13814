"""``python -m more_lightning export``: a trained adapter → a plain HF model folder (merged), or the adapter alone.

The adapter comes from ``SaveAdapter`` (a PEFT folder, whose ``adapter_config.json`` names the base model) or from a
Lightning checkpoint of ``fit`` (adapter-only: its ``hyper_parameters`` name the policy). The base model is always
loaded unquantised for the merge (merging into 4-bit weights would round the update away), in ``dtype``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from more_lightning.errors import SettingError, UserError
from more_lightning.policy.loading import DTYPES, LoraSettings, PolicyConfig, load_policy
from more_lightning.policy.model_source import ModelNotFound, check_model_source

CHECKPOINT_PREFIX = "model."


class ExportFolderError(UserError, OSError):
    """The export's ``--output`` is not empty (without ``--overwrite``), not a folder, or not writable."""


def prepare_output(output: str, overwrite: bool) -> Path:
    """``output`` as an empty, writable folder, checked before any model loads. A folder holding files is refused
    (a second export into it would mix both: PEFT loads whichever adapter files it finds) unless ``overwrite``, which
    clears it."""
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise ExportFolderError(f"--output {output}: exists and is not a folder")
    entries = sorted(folder.iterdir()) if folder.exists() else []
    if entries and not overwrite:
        raise ExportFolderError(
            f"--output {output} is not empty ({len(entries)} entries, e.g. {entries[0].name}): choose an empty "
            "folder, or pass --overwrite true to clear it first"
        )
    try:
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise ExportFolderError(f"--output {output}: cannot write there ({error.strerror or error})") from None
    return folder


def _policy_from_checkpoint(checkpoint: dict, base: str | None, dtype: str) -> PolicyConfig:
    policy = dict(checkpoint.get("hyper_parameters", {}).get("policy") or {})
    lora = policy.get("lora") or {}
    if not (base or policy.get("model")) or not lora:
        raise SettingError("the checkpoint does not name its policy model and LoRA settings: pass --base")
    return PolicyConfig(
        model=base or policy["model"],
        quantization="none",
        dtype=dtype,
        lora=LoraSettings(**{k: v for k, v in lora.items() if k in LoraSettings.__dataclass_fields__}),
    )


def load_trained_policy(adapter: str, base: str | None = None, dtype: str = "float32"):
    """The unquantised base with the trained adapter attached: ``(peft_model, processor)``."""
    path = Path(adapter)
    if path.is_dir():
        check_model_source(adapter, "--adapter", "adapter_config.json")
        config = json.loads((path / "adapter_config.json").read_text())
        policy = PolicyConfig(
            model=base or config["base_model_name_or_path"],
            quantization="none",
            dtype=dtype,
            lora=None,
            adapter=str(path),
        )
        return load_policy(policy)
    if not path.is_file():
        raise ModelNotFound(f"--adapter {adapter!r}: no such adapter folder or checkpoint file")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model, processor = load_policy(_policy_from_checkpoint(checkpoint, base, dtype))
    weights = {k.removeprefix(CHECKPOINT_PREFIX): v for k, v in checkpoint["state_dict"].items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    adapter_missing = [k for k in missing if "lora_" in k]
    if unexpected or adapter_missing:
        raise SettingError(
            f"{adapter}: the adapter weights do not fit the policy ({unexpected[:3]} {adapter_missing[:3]})"
        )
    return model, processor


def export_policy(
    adapter: str,
    output: str,
    merge: bool = True,
    base: str | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
):
    """Write the merged model (``merge``) or the adapter alone to ``output``, with the processor."""
    if dtype not in DTYPES:
        raise SettingError(f"dtype must be one of {list(DTYPES)}")
    folder = prepare_output(output, overwrite)
    model, processor = load_trained_policy(adapter, base, dtype)
    if merge:
        model = model.merge_and_unload()
    try:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    except OSError as error:
        raise ExportFolderError(
            f"--output {output}: writing the export failed ({error.strerror or error}); the folder holds a partial "
            "export: free space and export again with --overwrite true"
        ) from None
    return folder


def export(
    adapter: str,
    output: str,
    merge: bool = True,
    base: str | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> int:
    """Export a trained adapter: merged into a full-precision copy of its base (an HF model folder), or alone.

    Args:
        adapter: a PEFT adapter folder (``SaveAdapter``) or a ``fit`` checkpoint (``checkpoints/.../last.ckpt``).
        output: the folder to write.
        merge: merge the adapter into the base weights (``false``: save the adapter alone, in PEFT format).
        base: the base model (default: the one the adapter or checkpoint names).
        dtype: ``float32``, ``bfloat16`` or ``float16`` for the exported weights.
        overwrite: clear a non-empty ``output`` first (without it, a non-empty folder is refused).
    """

    folder = export_policy(adapter, output, merge, base, dtype, overwrite)
    print(f"{'Merged model' if merge else 'Adapter'} written to {folder}")
    return 0
