"""``EngineConfig``: which engine samples completions, and how the vLLM server is started or reached."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from more_lightning.errors import check_ranges

ENGINES = ("hf", "vllm")


@dataclass
class EngineConfig:
    """The generation backend of rollouts, ``evaluate``, ``ask``, ``synthesize`` and the demo.

    ``hf`` samples with ``model.generate`` in this process (the default). ``vllm`` sends every step prompt to a vLLM
    server (continuous batching, a paged KV cache, prefix caching) and keeps the server's LoRA adapter in sync with
    the policy after every optimizer step. The trainer still recomputes every log-prob it trains on; the server's
    sampled-token log-probs measure the engine/trainer gap (``rollout/engine_logprob_gap``). On a CPU the server
    follows an unquantised policy by its merged weights instead of its adapter (``sync``).
    """

    kind: Literal["hf", "vllm"] = "hf"
    """``hf`` (in-process ``generate``) or ``vllm`` (a vLLM server: ``make setup-vllm`` builds its environment)."""
    mode: Literal["spawned", "external"] = "spawned"
    """vllm: ``spawned`` (started from the environment ``make setup-vllm`` built, once per process, stopped at exit)
    or ``external`` (an OpenAI-compatible vLLM server already running at ``url``)."""
    url: str | None = None
    """vllm, external: the server's base URL, e.g. ``http://gpu-node:8000``. It must run with ``--enable-lora`` and
    ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` to follow a training policy."""
    adapter_dir: str | None = None
    """Where each synced LoRA adapter is written for the server to load (a folder both processes see; external
    servers on another machine need a shared file system). Default: a temporary folder, in memory where available."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """vllm, spawned: the served weights' dtype; ``auto`` uses ``policy.dtype``."""
    base_weights: Literal["auto", "full", "bitsandbytes"] = "auto"
    """vllm, spawned: ``full`` serves the base in ``dtype``; ``bitsandbytes`` quantises it to 4 bits on load (CUDA
    only); ``auto``: 4-bit on CUDA when the policy is ``nf4``, else ``full``."""
    serve_adapter: Literal["auto", "lora", "merged"] = "auto"
    """vllm, spawned, evaluating a trained adapter (``policy.adapter`` outside training): ``lora`` serves the base
    with the adapter loaded; ``merged`` merges it into a float32 copy of the base once (kept in the cache) and serves
    that without LoRA; ``auto``: ``merged`` on a CPU, where vLLM's LoRA layers were over 5× slower than the base
    alone (docs/benchmarks.md), ``lora`` on CUDA. Training follows its changing adapter as ``sync`` says."""
    sync: Literal["auto", "lora", "weights"] = "auto"
    """vllm, training: how the server follows the policy after each optimizer step. ``lora`` loads the current
    adapter (``--enable-lora``); ``weights`` (spawned servers, unquantised policies) merges it into a float32 copy of
    the base and has the server reload its weights in place, so it serves a plain model (``engines/weight_sync.py``);
    ``auto``: ``weights`` on a CPU for an unquantised policy, where vLLM's LoRA layers run uncompiled, else
    ``lora``."""
    max_model_len: int | None = None
    """vllm, spawned: the longest prompt + completion (default: the model's own context)."""
    kv_cache_gib: float = 1.0
    """vllm, spawned on CPU: GiB of KV cache it preallocates (``VLLM_CPU_KVCACHE_SPACE``)."""
    gpu_memory_utilization: float = 0.3
    """vllm, spawned on CUDA: the share of GPU memory the server may take (the trainer shares the GPU)."""
    threads: int | None = None
    """vllm, spawned on CPU: OpenMP threads of the server (default: every core)."""
    startup_timeout_s: float = 900.0
    """vllm, spawned: seconds to wait for the server (a first start compiles its kernels, minutes on a CPU)."""
    request_timeout_s: float = 900.0
    """vllm: seconds one request may take."""
    retries: int = 3
    """vllm: a failed request is retried this many times (a spawned server that died is restarted), then the run
    stops with an error naming the URL."""
    prefix_caching: bool = True
    """vllm, spawned: reuse the KV cache of shared prompt prefixes (the n samples of a group, the system prompt)."""
    extra_args: list[str] = field(default_factory=list)
    """vllm, spawned: more ``vllm serve`` arguments, e.g. ``[--enforce-eager]``."""

    def __post_init__(self) -> None:
        external = self.kind == "vllm" and self.mode == "external"
        check_ranges(
            "engine",
            {
                "kind": (self.kind, self.kind in ENGINES, f"one of {', '.join(ENGINES)}"),
                "url": (self.url, bool(self.url) or not external, "the vLLM server's base URL when mode is external"),
                "retries": (self.retries, self.retries >= 0, ">= 0"),
                "kv_cache_gib": (self.kv_cache_gib, self.kv_cache_gib > 0, "> 0"),
                "gpu_memory_utilization": (
                    self.gpu_memory_utilization,
                    0 < self.gpu_memory_utilization <= 1,
                    "in (0, 1]",
                ),
                "startup_timeout_s": (self.startup_timeout_s, self.startup_timeout_s > 0, "> 0"),
                "request_timeout_s": (self.request_timeout_s, self.request_timeout_s > 0, "> 0"),
            },
        )
