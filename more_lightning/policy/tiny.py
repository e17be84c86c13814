"""Tiny, real Qwen2.5-VL models built offline from a config, for tests, benchmarks and the CPU demo.

:func:`build_tiny_qwen2_5_vl` writes a folder that loads exactly like ``Qwen/Qwen2.5-VL-7B-Instruct``:
``Qwen2_5_VLForConditionalGeneration.from_pretrained(path)`` and ``AutoProcessor.from_pretrained(path)``. The weights
are random (seeded), the tokenizer is a byte-level BPE trained here on a small built-in text (same pre-tokenizer,
split regex and special tokens as Qwen2), the chat template is Qwen2-VL's, and the image processor is the PIL one.

Configs name such a model as ``tiny:qwen2.5-vl`` (``model_source.resolve_model_name``); it is built once per machine
into the cache and is deterministic for a given seed. Every Linear has in_features a multiple of 64, which bitsandbytes'
4-bit CPU kernels need.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from more_lightning.errors import SettingError
from more_lightning.paths import build_once, cache_dir

TINY_PREFIX = "tiny:"
TINY_BUILDER_VERSION = "1"
"""Bumped whenever the built model changes, so stale cache folders are not reused."""

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _training_text() -> list[str]:
    """The text the tiny tokenizer is trained on: plain English plus MoRE-protocol-shaped lines."""
    prose = [
        "Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex.",
        "The quick brown fox jumps over the lazy dog while the five boxing wizards jump quickly.",
        "Paris is the capital and most populous city of France. Stockholm lies on the coast of the Baltic Sea.",
        "A table has a title, a section title, a caption, a header and rows; each row has cells.",
        "The photograph shows a cat sitting on a red chair next to a cup of coffee in the morning light.",
        "Which film came out first? Who directed it, and in which year was the director born?",
    ]
    experts = ["text retriever", "text image retriever", "table retriever", "none"]
    subjects = [
        "the capital of France",
        "the director of Alien",
        "the year the film was released",
        "the colour of the shape",
        "the population of Sweden",
        "the author of Hamlet",
    ]
    lines = []
    for i, subject in enumerate(subjects):
        expert = experts[i % len(experts)]
        lines += [
            f"<think>I need to know {subject}.</think>",
            f"<sub-question>What is {subject}?</sub-question>",
            f"<ret>{expert}</ret>",
            f"<answer>{subject} is {i + 1}</answer>",
            f"Origin question: Who or what is {subject}?",
            f"Sub-question{i + 1}: What is {subject}?\nAnswer{i + 1}: {subject}",
            f"ter-{i}: A passage about {subject}. tir-{i}: An image of {subject}. tar-{i}: [Title] {subject} [Row]",
        ]
    alphabet = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return prose + lines + [" ".join(str(n) for n in range(100)), alphabet]


def _build_tokenizer(vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2TokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_training_text(), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer = Qwen2TokenizerFast(
        vocab=state["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tokenizer


def build_tiny_qwen2_5_vl(output_dir: str | os.PathLike, seed: int = 0, vocab_size: int = 768) -> Path:
    """Build a tiny random Qwen2.5-VL (model + tokenizer + PIL image processor) and ``save_pretrained`` it.

    Text model: hidden 64, 2 layers, 4 heads / 2 KV heads; vision tower: depth 2, hidden 64. About 0.4M parameters.
    """
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessorPil,
        Qwen2VLVideoProcessor,
    )

    tokenizer = _build_tokenizer(vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 64,
        "num_heads": 2,
        "intermediate_size": 128,
        "out_hidden_size": 64,
        "fullatt_block_indexes": [1],
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
    }
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 56 * 56, "longest_edge": 224 * 224},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


TINY_MODELS = {"qwen2.5-vl": build_tiny_qwen2_5_vl}
"""Tiny models a config can name as ``tiny:<name>``."""


def verify_model_folder(folder: Path) -> None:
    """Raise unless ``folder`` holds a loadable HF model: config, weights and processor (or tokenizer)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    vision = getattr(config, "vision_config", None) is not None
    (AutoModelForImageTextToText if vision else AutoModelForCausalLM).from_pretrained(folder)
    (AutoProcessor if vision else AutoTokenizer).from_pretrained(folder)


def tiny_model_path(name: str = "qwen2.5-vl", seed: int = 0) -> Path:
    """The cache folder of tiny model ``name``, built on first use (complete or absent: see ``paths.build_once``)."""
    if name not in TINY_MODELS:
        raise SettingError(f"unknown tiny model {name!r}; known: {', '.join(TINY_MODELS)}")
    target = cache_dir("models") / f"tiny-{name}-seed{seed}-v{TINY_BUILDER_VERSION}"
    return build_once(target, lambda staging: TINY_MODELS[name](staging, seed=seed), verify_model_folder)


def build_tiny_model(name: str = "qwen2.5-vl", seed: int = 0) -> int:
    """Build (once) a tiny random model that configs can name as `tiny:<name>`, and print its folder.

    Args:
        name: which tiny model.
        seed: weight-initialisation seed.
    """

    print(tiny_model_path(name, seed=seed))
    return 0
