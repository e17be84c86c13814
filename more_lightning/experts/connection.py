"""One config object that says how to reach Weaviate, and a context manager that yields a connected client.

Modes:
- ``embedded`` (default): more_lightning starts its own server (:class:`~more_lightning.experts.server.WeaviateServer`)
  from the binary ``make setup`` built, with a data folder in the cache, and stops it at the end.
- ``local``: a server that is already running (``host``, ``http_port``, ``grpc_port``), e.g. Docker.
- ``cloud``: a remote or Weaviate Cloud cluster (``url`` + ``api_key`` or ``$WEAVIATE_API_KEY``).
- ``client_embedded``: weaviate-client's own embedded mode, which downloads a release binary from GitHub (needs
  internet access).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from more_lightning.errors import SettingError, UserError
from more_lightning.experts.binary import WEAVIATE_TAG
from more_lightning.paths import cache_dir

log = logging.getLogger(__name__)


class WeaviateUnreachable(UserError, ConnectionError):
    """Weaviate did not answer after the configured retries."""


@dataclass
class WeaviateConfig:
    """How to reach the Weaviate server that holds the experts' collections."""

    mode: Literal["embedded", "local", "cloud", "client_embedded"] = "embedded"
    """``embedded``: start our own server; ``local``: a running server; ``cloud``: URL + API key;
    ``client_embedded``: weaviate-client downloads and runs a release (needs internet)."""
    data_dir: str | None = None
    """Embedded modes: the persistence folder. Default: ``<cache>/weaviate-data/default``."""
    binary: str | None = None
    """Embedded mode: the ``weaviate-server`` executable. Default: ``$MORE_LIGHTNING_WEAVIATE_BIN`` or the one
    ``make setup`` built."""
    host: str = "127.0.0.1"
    """Local mode: the server's host."""
    http_port: int | None = None
    """HTTP port. Local mode default 8080; embedded default: a free port (remembered per data folder)."""
    grpc_port: int | None = None
    """gRPC port. Local mode default 50051; embedded default: a free port."""
    url: str | None = None
    """Cloud mode: the cluster URL, e.g. ``https://my-cluster.weaviate.cloud``."""
    api_key: str | None = None
    """Cloud mode: the API key. Default: ``$WEAVIATE_API_KEY``."""
    startup_timeout: float = 90.0
    """Embedded mode: seconds to wait for the server to become ready."""
    connect_retries: int = 3
    """How many times to try connecting before giving up with a clear error."""
    retry_delay: float = 2.0
    """Seconds between connection attempts (doubles after each failure)."""

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir) if self.data_dir else cache_dir("weaviate-data", "default")

    def describe(self) -> str:
        """Where this config points, for error messages."""
        if self.mode == "cloud":
            return self.url or "(no url set)"
        if self.mode == "local":
            return f"http://{self.host}:{self.http_port or 8080} (gRPC {self.grpc_port or 50051})"
        return f"an {self.mode} server on data folder {self.resolved_data_dir()}"


def _connect_once(config: WeaviateConfig):
    import weaviate
    from weaviate.classes.init import Auth

    if config.mode == "local":
        return weaviate.connect_to_local(
            host=config.host, port=config.http_port or 8080, grpc_port=config.grpc_port or 50051
        )
    if config.mode == "cloud":
        key = config.api_key or os.environ.get("WEAVIATE_API_KEY")
        if not config.url:
            raise SettingError("weaviate.mode is 'cloud' but weaviate.url is not set.")
        return weaviate.connect_to_weaviate_cloud(
            cluster_url=config.url, auth_credentials=Auth.api_key(key) if key else None
        )
    if config.mode == "client_embedded":
        binaries = cache_dir("weaviate", "client-embedded")
        return weaviate.connect_to_embedded(
            version=WEAVIATE_TAG.lstrip("v"),
            binary_path=str(binaries),
            persistence_data_path=str(config.resolved_data_dir()),
            port=config.http_port or 8079,
            grpc_port=config.grpc_port or 50050,
            environment_variables={"DISABLE_TELEMETRY": "true", "ENABLE_MODULES": ""},
        )
    raise SettingError(f"unknown weaviate.mode {config.mode!r}")


def connect_with_retries(config: WeaviateConfig):
    """Connect to a ``local``/``cloud``/``client_embedded`` server, retrying; raise :class:`WeaviateUnreachable`."""
    delay = config.retry_delay
    last_error: Exception | None = None
    for attempt in range(1, config.connect_retries + 1):
        try:
            return _connect_once(config)
        except ValueError:
            raise
        except Exception as error:  # weaviate raises several unrelated types for "not there"
            last_error = error
            log.warning(
                "Weaviate at %s: attempt %d/%d failed: %s", config.describe(), attempt, config.connect_retries, error
            )
            if attempt < config.connect_retries:
                time.sleep(delay)
                delay *= 2
    hint = {
        "local": "start one with `python -m more_lightning server` (it prints the ports to use), fix "
        "weaviate.host/http_port/grpc_port, or use `weaviate.mode: embedded` (started and stopped for you)",
        "cloud": "check weaviate.url and the API key ($WEAVIATE_API_KEY), and that this machine can reach it",
        "client_embedded": "this mode downloads Weaviate from GitHub; without internet use `weaviate.mode: embedded`",
    }[config.mode]
    raise WeaviateUnreachable(
        f"Could not connect to Weaviate at {config.describe()} after {config.connect_retries} attempts "
        f"({type(last_error).__name__}: {str(last_error).splitlines()[0][:200] if last_error else ''}). To fix: {hint}."
    ) from None


@contextlib.contextmanager
def open_weaviate(config: WeaviateConfig | None = None) -> Iterator:
    """Yield a connected weaviate-client v4 client; start (and afterwards stop) the server in ``embedded`` mode."""
    config = config or WeaviateConfig()
    if config.mode == "embedded":
        from more_lightning.experts.server import WeaviateServer

        with WeaviateServer(
            config.resolved_data_dir(),
            binary=config.binary,
            http_port=config.http_port,
            grpc_port=config.grpc_port,
            startup_timeout=config.startup_timeout,
        ) as server:
            client = server.connect()
            try:
                yield client
            finally:
                client.close()
        return
    client = connect_with_retries(config)
    try:
        yield client
    finally:
        client.close()


def server(data_dir: str | None = None, http_port: int | None = None, grpc_port: int | None = None) -> int:
    """Run the embedded Weaviate server in the foreground until Ctrl-C (for `weaviate.mode: local` users).

    Args:
        data_dir: persistence folder (default: the cache's default data folder).
        http_port: HTTP port (default: a free one).
        grpc_port: gRPC port (default: a free one).
    """
    from more_lightning.experts.server import WeaviateServer

    folder = WeaviateConfig(data_dir=data_dir).resolved_data_dir()
    with WeaviateServer(folder, http_port=http_port, grpc_port=grpc_port) as running:
        print(f"Weaviate ready at {running.url} (gRPC {running.ports.grpc}), data in {folder}. Ctrl-C stops it.")
        print(
            f"Connect with: weaviate.mode=local, host=127.0.0.1, http_port={running.ports.http}, "
            f"grpc_port={running.ports.grpc}"
        )
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        try:
            while running.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0
