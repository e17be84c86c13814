"""Loading the policy: an HF vision-language or text-only model, optionally quantised, with a LoRA adapter.

The reference policy for the KL term is the same module under ``model.disable_adapter()``: no second copy of the
weights (as TRL, EasyR1 and verl do under LoRA).

bitsandbytes caveat on CPUs with avx512_bf16: the first no-grad eval forward (e.g. ``generate``) repacks the
``Linear4bit`` weights for CPU inference, and every later training forward then fails with
``a view of a leaf Variable that requires grad is being used in an in-place operation``. A GRPO loop (generate, then
train) always hits it, so :func:`load_policy` turns that repacking off on every ``Linear4bit``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch

from more_lightning.errors import SettingError, check_ranges
from more_lightning.policy.model_source import check_model_source, resolve_model_name

log = logging.getLogger(__name__)

LANGUAGE_MODEL_PROJECTIONS = r"^(?!.*(visual|vision)).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
"""LoRA targets: the attention and MLP projections of the language model only (a plain list of names would also
hit the vision tower's MLP)."""

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class LoraSettings:
    """The LoRA adapter trained on top of the (frozen, possibly quantised) base model."""

    r: int = 16
    """Rank of the low-rank update."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by ``alpha / r``."""
    dropout: float = 0.05
    """Dropout on the adapter's input."""
    target_modules: str = LANGUAGE_MODEL_PROJECTIONS
    """A regex (full match on module names) choosing the Linear layers that get an adapter."""

    def __post_init__(self) -> None:
        check_ranges(
            "policy.lora",
            {
                "r": (self.r, self.r >= 1, "an integer >= 1"),
                "alpha": (self.alpha, self.alpha > 0, "> 0"),
                "dropout": (self.dropout, 0 <= self.dropout < 1, "in [0, 1)"),
            },
        )


@dataclass
class PolicyConfig:
    """Which model the policy is and how it is loaded."""

    model: str = "tiny:qwen2.5-vl"
    """A local folder, a hub name (e.g. ``Qwen/Qwen2.5-VL-7B-Instruct``), or ``tiny:qwen2.5-vl`` (built offline)."""
    quantization: Literal["nf4", "int8", "none"] = "none"
    """``nf4``: 4-bit NormalFloat with double quantisation (QLoRA); ``int8``: LLM.int8(); ``none``: ``dtype``."""
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Weights dtype when not quantised, and the compute dtype of quantised layers."""
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    """A new adapter to train; ``None`` adds none (inference, or ``adapter`` below)."""
    adapter: str | None = None
    """A trained LoRA adapter folder (PEFT format) to load instead of a new one (evaluation, ``ask``, resuming)."""
    merge_adapter: bool = False
    """Merge the loaded ``adapter`` into the base weights (inference only: ``evaluate``, ``ask``): the same outputs
    without the adapter's extra matmuls at every layer. Needs ``float32`` weights (16-bit ones round it away)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    quant_storage_dtype: Literal["bfloat16", "float16", "float32", "uint8"] = "uint8"
    """Storage dtype of 4-bit weights; set it to the compute dtype under FSDP so the quantised weights shard."""
    device_map: str | None = None
    """Where to load the weights (``cpu``, ``cuda:0``, ...). Default: CPU, or the current CUDA device if any."""
    fp32_embeddings: bool = False
    """Quantised policies: hold the input embeddings and ``lm_head`` in fp32, as peft's
    ``prepare_model_for_kbit_training`` does, instead of ``dtype``. Buys logits from an fp32 matmul (16-bit logits
    round to 3 significant digits: a logit of 20 is off by up to 0.06); costs twice their memory (Qwen2.5-VL-7B:
    2 × 152,064 × 3,584 weights, 2.0 GiB in bf16, 4.1 GiB in fp32). The norms and other small non-quantised weights
    are fp32 either way."""


def is_vision_language(model_path: str) -> bool:
    """Whether the model at ``model_path`` has a vision tower (loaded with its processor) or is text-only."""
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(model_path), "vision_config", None) is not None


def context_length(model_path: str) -> int:
    """The longest sequence (prompt and completion, in tokens) the model at ``model_path`` takes."""
    from transformers import AutoConfig

    path = resolve_model_name(model_path)
    check_model_source(path)
    config = AutoConfig.from_pretrained(path)
    return getattr(getattr(config, "text_config", None) or config, "max_position_embeddings", None) or 32768


def _quantization_config(config: PolicyConfig):
    from transformers import BitsAndBytesConfig

    compute = DTYPES[config.dtype]
    if config.quantization == "nf4":
        storage = torch.uint8 if config.quant_storage_dtype == "uint8" else DTYPES[config.quant_storage_dtype]
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=storage,
        )
    if config.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def disable_cpu_4bit_repacking(model: torch.nn.Module) -> int:
    """Turn off bitsandbytes' avx512_bf16 weight repacking on every ``Linear4bit`` (see the module docstring)."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    count = 0
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def _cast_to_weight_dtype(module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].to(module.weight.dtype), *args[1:])


def prepare_quantized(model: torch.nn.Module, fp32_embeddings: bool = False) -> None:
    """Freeze the base and cast its non-quantised 16-bit weights to fp32 (norms, biases, the vision tower's own),
    as peft's ``prepare_model_for_kbit_training`` does, except the input embeddings and ``lm_head`` unless
    ``fp32_embeddings``: in the compute dtype they take half the memory, and they are most of what is not quantised.
    ``lm_head`` then receives the fp32 output of the final norm, cast to its dtype. (Gradient checkpointing is
    enabled by :func:`load_policy` under transformers' current name; peft calls the deprecated one.)"""
    embeddings = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    for parameter in model.parameters():
        parameter.requires_grad = False
        keep = id(parameter) in embeddings and not fp32_embeddings
        if parameter.dtype in (torch.float16, torch.bfloat16) and type(parameter).__name__ != "Params4bit" and not keep:
            parameter.data = parameter.data.to(torch.float32)
    head = model.get_output_embeddings()
    if head is not None and head.weight.dtype != torch.float32:
        head.register_forward_pre_hook(_cast_to_weight_dtype)


def use_tf32_matmuls() -> None:
    """On CUDA, run fp32 matmuls (LoRA, fp32 weights) on TF32 tensor cores (``set_float32_matmul_precision("high")``)
    unless the program chose a precision itself."""
    if torch.cuda.is_available() and torch.backends.cuda.matmul.fp32_precision == "none":
        torch.set_float32_matmul_precision("high")


def load_processor(model_path: str):
    """The processor (vision-language models) or tokenizer (text-only models) for ``model_path``."""
    from transformers import AutoProcessor, AutoTokenizer

    path = resolve_model_name(model_path)
    check_model_source(path)
    if is_vision_language(path):
        return AutoProcessor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(config: PolicyConfig):
    """Load the base model (quantised as configured), attach the LoRA adapter, and return ``(model, processor)``."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    path = resolve_model_name(config.model)
    check_model_source(path)
    if config.adapter is not None:
        check_model_source(config.adapter, "policy.adapter", "adapter_config.json")
    model_class = AutoModelForImageTextToText if is_vision_language(path) else AutoModelForCausalLM
    quantization = _quantization_config(config)
    device_map = config.device_map or (f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
    use_tf32_matmuls()
    model = model_class.from_pretrained(
        path, dtype=DTYPES[config.dtype], quantization_config=quantization, device_map=device_map
    )
    disable_cpu_4bit_repacking(model)
    if quantization is not None:
        prepare_quantized(model, config.fp32_embeddings)
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if config.adapter is not None:
        from peft import PeftModel

        if config.merge_adapter:
            if quantization is not None or config.dtype != "float32":
                raise SettingError(
                    "policy.merge_adapter needs quantization: none and dtype: float32 (a merge into NF4, int8 or "
                    "16-bit weights rounds the adapter's small updates away)"
                )
            model = PeftModel.from_pretrained(model, config.adapter).merge_and_unload()
        else:
            model = PeftModel.from_pretrained(model, config.adapter, is_trainable=True)
    elif config.lora is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora.r,
                lora_alpha=config.lora.alpha,
                lora_dropout=config.lora.dropout,
                target_modules=config.lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    return model, load_processor(path)
