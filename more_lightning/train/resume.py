"""Resuming ``fit`` from a checkpoint: the model, data and rollout settings must be the ones it was trained with.

LightningCLI builds the module from the settings given now and then loads the checkpoint into it, silently: a resume
with another LoRA rank, learning rate or beta would continue a different run than the one saved (or keep the saved
adapter under a new name). :func:`check_resume_settings` compares the settings saved in the checkpoint
(``hyper_parameters``) with the given ones and stops with every difference. Settings that may change on resume —
trainer settings (``max_steps``, logging, checkpoint paths), validation decoding and the shared-prompt switch (exact
either way) — are not compared. The data position and rollout buffer are restored too, so the settings that decide
the data stream (``data.trajectories``, ``data.questions``, ``data.seed``..., the rollout's group size and sampling)
must match as well.
"""

from __future__ import annotations

import json

from more_lightning.errors import UserError

COMPARED = ("policy", "loss", "optimizer")
"""The ``model`` settings a resume must keep."""


class ResumeMismatch(UserError, ValueError):
    """``--ckpt_path`` names a checkpoint trained with other settings than the ones given."""


def _flat(value, prefix: str) -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            if not str(key).startswith("_"):
                out.update(_flat(item, f"{prefix}.{key}"))
        return out
    return {prefix: json.loads(json.dumps(value, default=str))}  # tuples and lists compare equal


def settings_differences(saved: dict, given: dict) -> list[tuple[str, object, object]]:
    """``(field, saved value, given value)`` for every compared ``model`` setting that differs."""
    saved_flat = {k: v for name in COMPARED for k, v in _flat(saved.get(name), f"model.{name}").items()}
    given_flat = {k: v for name in COMPARED for k, v in _flat(given.get(name), f"model.{name}").items()}
    return [
        (key, saved_flat.get(key), given_flat.get(key))
        for key in sorted(set(saved_flat) | set(given_flat))
        if saved_flat.get(key) != given_flat.get(key)
    ]


def stream_differences(checkpoint: dict, config: dict) -> list[tuple[str, object, object]]:
    """``(field, saved, given)`` for the data and rollout settings that decide the data stream (saved in the data
    module's and the rollout's checkpoint state) which the given ``fit`` config changes: the data position and the
    rollout buffer only mean something on the same data, sampled the same way."""
    from more_lightning.data.datamodule import StepGRPODataModule, stream_settings

    found = []
    saved_data = (checkpoint.get(StepGRPODataModule.__qualname__) or {}).get("settings")
    if saved_data is not None and config.get("data") is not None:
        found += _differences(saved_data, stream_settings(config["data"]), "data")
    saved_rollout = ((checkpoint.get("callbacks") or {}).get("RolloutCallback") or {}).get("settings")
    rollout = (config.get("model") or {}).get("rollout") or {}
    if saved_rollout is not None:
        found += _differences(saved_rollout, rollout.get("init_args") or {}, "model.rollout.init_args")
    return found


def _differences(saved: dict, given: dict, prefix: str) -> list[tuple[str, object, object]]:
    """The fields of ``saved`` (flattened) that ``given`` also holds with another value."""
    saved_flat, given_flat = _flat(saved, prefix), _flat(given, prefix)
    return [(k, v, given_flat[k]) for k, v in sorted(saved_flat.items()) if k in given_flat and given_flat[k] != v]


def check_resume_settings(checkpoint_path: str, checkpoint: dict, config: dict) -> None:
    """Raise :class:`ResumeMismatch` listing each differing field of the ``fit`` config (``model`` settings, and the
    data and rollout settings of the data stream), and how to start a new run from the weights."""
    saved = checkpoint.get("hyper_parameters") or {}
    differences = settings_differences(saved, config.get("model") or {}) + stream_differences(checkpoint, config)
    if not differences:
        return
    rows = "\n".join(f"  {key}: saved {old!r}, given {new!r}" for key, old, new in differences)
    raise ResumeMismatch(
        f"--ckpt_path {checkpoint_path} was trained with other settings than the ones given:\n{rows}\n"
        "Resume with the saved settings (drop these overrides), or start a new run from its weights: "
        f"`python -m more_lightning export --adapter {checkpoint_path} --merge false --output <folder>`, then "
        "`fit ... --model.policy.adapter <folder>` without --ckpt_path."
    )
