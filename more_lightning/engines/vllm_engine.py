"""``VLLMEngine``: one OpenAI-compatible vLLM server (spawned or external), its requests, and the adapter it serves.

Requests go to ``/v1/completions`` (prompt given as token ids: exactly the tokens the trainer encodes) or, for prompts
with images, ``/v1/chat/completions`` (the image as a data URL; the server applies the same chat template). Both ask
for the sampled tokens' ids (``return_tokens_as_token_ids``) and log-probs.

**Following the policy.** :meth:`VLLMEngine.sync_policy` makes the server serve the policy's current weights. With
``sync: lora`` it saves the adapter (PEFT format) to a fresh folder and loads it into the server under a new name
(``/v1/load_lora_adapter``); later requests name it, and the previous one is unloaded; the base weights stay loaded.
With ``sync: weights`` it writes the adapter merged into the base and the server reloads its weights in place
(``weight_sync.py``). Each optimizer step changes the adapter, so the rollout calls it with the global step as the
version; an unchanged version is not re-sent.

**Faults.** A request that fails (connection refused or reset, a 5xx, a timeout) is retried ``engine.retries`` times
with a growing pause; a spawned server found dead is restarted first and the current adapter loaded again. Then
:class:`EngineUnreachable` names the URL and the fix; nothing of the rollout phase has been stored, so a resumed run
redoes the step.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

import httpx

from more_lightning.engines.config import EngineConfig
from more_lightning.engines.vllm_server import VLLMServer, start_alone
from more_lightning.errors import UserError

log = logging.getLogger(__name__)


class EngineUnreachable(UserError, ConnectionError):
    """The vLLM server did not answer after the bounded retries."""


class EngineRefused(UserError, ValueError):
    """The vLLM server rejected a request for a reason retrying cannot fix (bad model, bad adapter, bad input)."""


IN_MEMORY_MIN_FREE = 4 << 30
"""Bytes ``/dev/shm`` must have free to hold the synced adapters or merged weights (a container's is often 64 MiB);
else they go to the temporary folder."""


def _adapter_root(config: EngineConfig) -> Path:
    if config.adapter_dir:
        root = Path(config.adapter_dir).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="adapters-", dir=root))
    in_memory = Path("/dev/shm")
    roomy = in_memory.is_dir() and shutil.disk_usage(in_memory).free >= IN_MEMORY_MIN_FREE
    return Path(tempfile.mkdtemp(prefix="more-lightning-adapters-", dir=in_memory if roomy else None))


class VLLMEngine:
    """A vLLM server and the adapter it currently serves.

    Args:
        config: the engine settings.
        server: the spawned server (restarted when it dies), or ``None`` for ``mode: external``.
        sync: how :meth:`sync_policy` follows a training policy: load its ``lora`` adapter, or reload the server's
            ``weights`` merged (a server started with ``reloads_weights``).
    """

    def __init__(
        self, config: EngineConfig, server: VLLMServer | None = None, sync: Literal["lora", "weights"] = "lora"
    ) -> None:
        self.config = config
        self.server = server
        self.sync = sync
        self.url = (server.url if server is not None else config.url or "").rstrip("/")
        self.client = httpx.Client(timeout=httpx.Timeout(config.request_timeout_s, connect=10.0))
        self.base_model = server.served_name if server is not None else self._external_base_model()
        self.adapter: str | None = None
        """The name requests use: the loaded adapter, or ``None`` (the base model)."""
        self.adapter_version: object = None
        self._adapter_path: Path | None = None
        self.weights_folder: Path | None = None
        """The folder of merged weights the server was last told to load (``sync: weights``, or an evaluated adapter
        merged into its base); loaded again after a restart."""
        self._adapter_root: Path | None = None  # made at the first sync
        self._loads = 0
        self._restarting = threading.RLock()  # re-entrant: a restart reloads the adapter through post()

    # -- requests ----------------------------------------------------------------------------------------------
    def post(self, path: str, payload: dict) -> dict:
        """POST ``payload`` to ``path`` with bounded retries; the decoded JSON answer."""
        if self.server is not None:
            with self._restarting:  # concurrent requests: one restarts, the others wait until it is ready
                if not self.server.alive():
                    self._restart()  # stopped while another stage's server ran (vllm_server.start_alone)
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            try:
                response = self.client.post(f"{self.url}{path}", json=payload)
            except httpx.TransportError as error:  # refused, reset, timed out
                problem = f"{type(error).__name__}: {error}"
            else:
                if response.status_code < 300:  # the adapter endpoints answer in plain text
                    is_json = response.headers.get("content-type", "").startswith("application/json")
                    return response.json() if is_json else {"text": response.text}
                if response.status_code < 500:
                    raise EngineRefused(f"the vLLM server at {self.url} refused {path}: {response.text[:500]}")
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
            if attempt + 1 < attempts:
                log.warning("vllm: %s failed (%s); retry %d of %d", path, problem, attempt + 1, attempts - 1)
                time.sleep(min(2.0**attempt, 30.0))
                self._recover()
        raise EngineUnreachable(
            f"the vLLM server at {self.url} did not answer {path} after {attempts} attempts ({problem}). "
            + (
                f"It was started by this run; its log: {self.server.log_path}"
                if self.server is not None
                else "Check that it runs (`curl <url>/health`) and that engine.url is right"
            )
            + ". Checkpoints are intact: rerun with ckpt_path=last to redo the step."
        )

    def _recover(self) -> None:
        """Restart a spawned server that died, and load the current adapter into it again."""
        if self.server is None:
            return
        with self._restarting:
            if self.server.alive():
                return
            log.warning("vllm: the server at %s died; restarting it", self.url)
            self._restart()

    def _restart(self) -> None:
        """Start the spawned server again (on a new port) with the adapter this engine serves."""
        self.server = start_alone(self.server)
        self.url = self.server.url
        if self._adapter_path is not None:
            self._load(self.adapter, self._adapter_path)
        if self.weights_folder is not None:
            self.reload_weights(self.weights_folder)

    def _external_base_model(self) -> str:
        """The base model an external server serves (the first model that is not a LoRA adapter)."""
        try:
            models = self.client.get(f"{self.url}/v1/models", timeout=10.0).json()["data"]
        except (httpx.HTTPError, ValueError, KeyError) as error:
            raise EngineUnreachable(
                f"engine.url {self.url}: no vLLM server answers /v1/models ({type(error).__name__}: {error}); start "
                "one (`vllm serve <model> --enable-lora`) or fix engine.url"
            ) from None
        bases = [m["id"] for m in models if not m.get("parent")]
        if not bases:
            raise EngineRefused(f"the vLLM server at {self.url} lists no base model")
        return bases[0]

    @property
    def model_name(self) -> str:
        """The ``model`` field of requests: the synced adapter if any, else the base."""
        return self.adapter or self.base_model

    # -- the adapter -------------------------------------------------------------------------------------------
    def sync_policy(self, model, version: object) -> bool:
        """Serve ``model``'s current weights (a PEFT LoRA model) if ``version`` differs from the one served, as
        ``sync`` says; returns whether it sent anything."""
        if version == self.adapter_version and (self.adapter is not None or self.weights_folder is not None):
            return False
        if self._adapter_root is None:
            self._adapter_root = _adapter_root(self.config)
        if self.sync == "weights":
            from more_lightning.engines.weight_sync import write_merged_weights

            self.reload_weights(write_merged_weights(model, self._adapter_root / "merged"))
        else:
            self._load_live_adapter(model)
        self.adapter_version = version
        return True

    def reload_weights(self, folder: Path) -> None:
        """Have the server (started with ``reloads_weights``) load the weights in ``folder`` in place of its own, and
        drop its prefix cache (the KV of the old weights)."""
        self.post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}})
        self.post("/reset_prefix_cache", {})
        self.weights_folder = folder

    def _load_live_adapter(self, model) -> None:
        """Save ``model``'s adapter to a fresh folder, load it, and unload the one served before."""
        self._loads += 1
        name = f"policy-{self._loads}"
        path = self._adapter_root / name
        model.save_pretrained(str(path))
        previous, previous_path = self.adapter, self._adapter_path
        self._load(name, path)
        if previous is not None:
            self.post("/v1/unload_lora_adapter", {"lora_name": previous})
            if previous_path.parent == self._adapter_root:  # ours, not a user's adapter folder
                shutil.rmtree(previous_path, ignore_errors=True)

    def load_adapter_folder(self, folder: str) -> None:
        """Serve a saved PEFT adapter folder (``policy.adapter`` in evaluate, ask, synthesize)."""
        self._loads += 1
        self._load(f"adapter-{self._loads}", Path(folder).expanduser().resolve())
        self.adapter_version = folder

    def _load(self, name: str, path: Path) -> None:
        try:
            self.post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        except EngineRefused as refused:  # a retried request whose first attempt got through
            if "already been loaded" not in str(refused):
                raise
        self.adapter, self._adapter_path = name, path

    def close(self) -> None:
        """Close the connection and remove the synced adapters (a spawned server stays up until the process
        ends, for the process's next run)."""
        self.client.close()
        if self._adapter_root is not None:
            shutil.rmtree(self._adapter_root, ignore_errors=True)
