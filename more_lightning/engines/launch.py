"""Opening the configured engine for a policy: checks first (before any weights load), then the server.

:func:`check_vllm_policy` refuses what the vLLM engine cannot do, each with the reason and the fix: full fine-tuning
(only LoRA adapters are synced; use ``engine.kind: hf``), sharded training (FSDP), and a model architecture the
installed vLLM does not serve. :func:`open_vllm_engine` starts (or reuses) the spawned server, or connects to the
external one.
"""

from __future__ import annotations

import json
from pathlib import Path

from more_lightning.engines.config import EngineConfig
from more_lightning.engines.vllm_engine import VLLMEngine
from more_lightning.engines.vllm_server import lora_rank_limit, on_cuda, spawned_server, vllm_env_dir, vllm_python
from more_lightning.errors import UserError
from more_lightning.policy.loading import PolicyConfig
from more_lightning.policy.model_source import check_model_source, looks_local, resolve_model_name

ARCHITECTURES_FILE = "architectures.txt"
"""Written by ``make setup-vllm``: the model architectures the installed vLLM serves, one per line."""


class EngineUnsupported(UserError, ValueError):
    """The configured policy cannot be served by the vLLM engine."""


def adapter_rank(folder: str) -> int:
    """The LoRA rank of a saved PEFT adapter folder."""
    return int(json.loads((Path(folder).expanduser() / "adapter_config.json").read_text())["r"])


def served_rank(policy: PolicyConfig, training: bool) -> int:
    """The LoRA rank the server must hold (0: the base alone)."""
    if policy.adapter is not None:
        return adapter_rank(policy.adapter)
    if training and policy.lora is not None:
        return policy.lora.r
    return 0


def model_architectures(model_path: str) -> list[str]:
    config = Path(model_path) / "config.json"
    return json.loads(config.read_text()).get("architectures", []) if config.is_file() else []


def check_vllm_policy(policy: PolicyConfig, training: bool, sharded: bool = False) -> None:
    """Raise :class:`EngineUnsupported` for what the vLLM engine cannot serve (see the module docstring)."""
    if training and policy.lora is None and policy.adapter is None:
        raise EngineUnsupported(
            "engine.kind vllm follows the policy by loading its LoRA adapter after every optimizer step; full "
            "fine-tuning (policy.lora: null) is not synced. Train a LoRA adapter, or use engine.kind hf"
        )
    if sharded:
        raise EngineUnsupported(
            "engine.kind vllm under a sharded strategy (FSDP) is not supported: the adapter would have to be "
            "gathered from every rank each step. Use DDP or one device, or engine.kind hf"
        )
    if policy.merge_adapter and policy.adapter is not None:
        return  # served as base + adapter: the same outputs without merging
    supported_file = vllm_env_dir() / ARCHITECTURES_FILE
    path = resolve_model_name(policy.model)
    if supported_file.is_file() and looks_local(path):
        supported = set(supported_file.read_text().split())
        unsupported = [a for a in model_architectures(path) if a not in supported]
        if unsupported:
            raise EngineUnsupported(
                f"policy.model {policy.model!r} is a {', '.join(unsupported)}, which the installed vLLM does not "
                "serve: use engine.kind hf for it"
            )


def open_vllm_engine(config: EngineConfig, policy: PolicyConfig, training: bool) -> VLLMEngine:
    """The engine for ``policy``: a spawned server (started once per process) or the external one."""
    if config.mode == "external":
        engine = VLLMEngine(config)
    else:
        vllm_python()  # not installed: one line naming the set-up command
        path = resolve_model_name(policy.model)
        check_model_source(path)
        merged_adapter = serves_merged_adapter(config, policy, training)
        if merged_adapter or syncs_weights(config, policy, training):
            # one float32 server of the base without LoRA, loaded with merged weights: a fit follows its policy with
            # it, and an evaluation of a trained adapter after a fit in the same process reuses it
            server = spawned_server(path, config, "float32", reloads_weights=True)
            engine = VLLMEngine(config, server, sync="weights")
            if merged_adapter:
                from more_lightning.engines.merged_adapter import merged_model_folder

                engine.reload_weights(merged_model_folder(policy))
            return engine
        rank = served_rank(policy, training)
        quantize = config.base_weights == "bitsandbytes" or (
            config.base_weights == "auto" and policy.quantization == "nf4" and on_cuda()
        )
        server = spawned_server(path, config, policy.dtype, lora_rank_limit(rank) if rank else 0, quantize)
        engine = VLLMEngine(config, server)
    if policy.adapter is not None and not training:  # training syncs the live adapter before every rollout
        engine.load_adapter_folder(policy.adapter)
    return engine


def syncs_weights(config: EngineConfig, policy: PolicyConfig, training: bool) -> bool:
    """Whether a training server follows the policy by its merged weights (``engine.sync``): ``weights``, or
    ``auto`` on a CPU for an unquantised policy; :class:`EngineUnsupported` for ``weights`` where it cannot."""
    if not training:
        return False
    if config.sync == "weights":
        if config.mode != "spawned" or policy.quantization != "none":
            raise EngineUnsupported(
                "engine.sync weights reloads the weights of a server more_lightning starts (engine.mode spawned) "
                f"from an unquantised policy (policy.quantization none; it is {policy.quantization}, mode "
                f"{config.mode}): use engine.sync lora"
            )
        return True
    return config.sync == "auto" and config.mode == "spawned" and policy.quantization == "none" and not on_cuda()


def serves_merged_adapter(config: EngineConfig, policy: PolicyConfig, training: bool) -> bool:
    """Whether a spawned server serves ``policy.adapter`` merged into its base (``engine.serve_adapter``)."""
    if training or policy.adapter is None or config.mode != "spawned":
        return False
    return config.serve_adapter == "merged" or (config.serve_adapter == "auto" and not on_cuda())
