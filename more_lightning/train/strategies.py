"""Sharded training of a LoRA policy: FSDP (``LoraFSDPStrategy``) and FSDP2 (``shard_policy`` under Lightning's
``ModelParallelStrategy``), on GPUs and — for tests and laptops — on CPU processes over gloo.

Both shard the frozen base and the adapter together, one unit per decoder layer (matched by class-name suffix, so any
HF architecture works) plus the root (embeddings, head, vision tower). FSDP1 needs ``use_orig_params`` for units
that mix frozen and trainable weights; FSDP2 shards per parameter and needs nothing. For QLoRA under FSDP1, set
``model.policy.quant_storage_dtype`` to the compute dtype so the 4-bit weights are stored in a dtype FSDP can
flatten and shard.

Lightning refuses ``FSDPStrategy`` on CPU (it checks the exact class) and torch's FSDP needs ``device_id`` set to
the CPU device there; the subclass below does both and otherwise leaves Lightning's FSDP as it is.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

DECODER_LAYERS = ("DecoderLayer",)
"""Class-name suffixes of the modules that become their own shard unit (``Qwen2_5_VLDecoderLayer``, ...)."""


def _is_layer(module: nn.Module, suffixes: tuple[str, ...]) -> bool:
    return type(module).__name__.endswith(suffixes)


def _wrap_layer(module: nn.Module, recurse: bool, nonwrapped_numel: int, suffixes: tuple[str, ...]) -> bool:
    return True if recurse else _is_layer(module, suffixes)


class LoraFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` (full shard by default) for a LoRA policy, on GPU or CPU.

    Args:
        wrap_layers: class-name suffixes of the modules wrapped as their own FSDP unit.
        **kwargs: ``FSDPStrategy`` arguments (``sharding_strategy``, ``cpu_offload``, ``mixed_precision``,
            ``process_group_backend``, ``activation_checkpointing_policy``, ...).
    """

    def __init__(self, wrap_layers: list[str] | None = None, **kwargs) -> None:
        self.wrap_layers = tuple(wrap_layers or DECODER_LAYERS)
        kwargs.setdefault("use_orig_params", True)
        kwargs.setdefault("auto_wrap_policy", functools.partial(_wrap_layer, suffixes=self.wrap_layers))
        super().__init__(**kwargs)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        from lightning.pytorch.strategies.fsdp import _move_torchmetrics_to_device, _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        _move_torchmetrics_to_device(model, self.root_device)
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model


def shard_policy(model: nn.Module, mesh, wrap_layers: tuple[str, ...] = DECODER_LAYERS) -> None:
    """FSDP2: ``fully_shard`` each decoder layer, then the HF model under the PEFT wrapper, over ``mesh`` (in place).

    The root is the HF model itself, not the PEFT wrapper: ``generate`` calls the HF model's ``forward`` directly,
    and the root's hooks must run there to gather the embeddings, head and vision tower."""
    from torch.distributed.fsdp import fully_shard

    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    for module in root.modules():
        if _is_layer(module, wrap_layers):
            fully_shard(module, mesh=mesh)
    fully_shard(root, mesh=mesh)


@contextlib.contextmanager
def gathered_root(model: nn.Module) -> Iterator[None]:
    """FSDP2: keep the root's own weights (embeddings, head, vision tower) gathered for a rollout.

    ``generate`` encodes images and embeds tokens before it calls the model's forward, outside the root's hooks; the
    decoder layers still gather themselves, one collective per forward, which every rank runs in step. Elsewhere
    (FSDP1, whose rollouts run inside the root's forward; DDP; one device) this does nothing."""
    from torch.distributed.fsdp import FSDPModule

    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(root, FSDPModule):
        yield
        return
    root.unshard()
    try:
        yield
    finally:
        root.reshard()
