"""A Weaviate server that more_lightning starts and stops itself: the *embedded default*.

:class:`WeaviateServer` runs the ``weaviate-server`` binary (built by ``make setup``) on loopback with its own data
folder and free ports, telemetry and modules off, and waits for ``/v1/.well-known/ready``. It is a context manager;
stopping sends SIGTERM, waits a bounded time, then kills. The server also dies with the Python process that started
it (Linux parent-death signal), so a crashed test run leaves no server behind.

The ports a data folder was first served on are kept in ``<data_dir>/ports.json`` and reused on restart when free:
Weaviate's raft state remembers its peers' addresses.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from more_lightning.child_server import launch, wait_until_ready
from more_lightning.errors import UserError
from more_lightning.experts.binary import find_binary
from more_lightning.experts.ports import free_port, free_port_pair, port_is_free

NODE_NAME = "more-lightning-node"
"""A stable node name, so a data folder can be reused across restarts and machines."""

SERVER_ENV = {
    "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
    "DEFAULT_VECTORIZER_MODULE": "none",
    "ENABLE_MODULES": "",
    "API_BASED_MODULES_DISABLED": "true",
    "DISABLE_TELEMETRY": "true",
    "GO_PROFILING_DISABLE": "true",
    "CLUSTER_IN_LOCALHOST": "true",
    "CLUSTER_BIND_ADDR": "127.0.0.1",
    "CLUSTER_HOSTNAME": NODE_NAME,
    "RAFT_BOOTSTRAP_EXPECT": "1",
    "RAFT_TIMEOUTS_MULTIPLIER": "1",
    "QUERY_DEFAULTS_LIMIT": "25",
    "LOG_LEVEL": "warning",
    "LOG_FORMAT": "text",
}


class WeaviateStartError(UserError, RuntimeError):
    """The server could not be started, or died while starting."""


@dataclass(frozen=True)
class ServerPorts:
    """The six ports one Weaviate node listens on."""

    http: int
    grpc: int
    gossip: int  # data port = gossip + 1
    raft: int  # raft internal RPC port = raft + 1

    def all(self) -> list[int]:
        return [self.http, self.grpc, self.gossip, self.gossip + 1, self.raft, self.raft + 1]


class WeaviateServer:
    """One Weaviate node on loopback, run from a local binary.

    Args:
        data_dir: persistence folder (created if missing). Reusing it keeps the collections.
        binary: the ``weaviate-server`` executable; default: the one ``make setup`` built.
        http_port: fixed HTTP port, or ``None`` for a free one (the gRPC port likewise).
        grpc_port: fixed gRPC port, or ``None``.
        startup_timeout: seconds to wait for readiness before giving up.
        stop_timeout: seconds to wait after SIGTERM before SIGKILL.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        data_dir: str | os.PathLike,
        binary: str | os.PathLike | None = None,
        http_port: int | None = None,
        grpc_port: int | None = None,
        startup_timeout: float = 90.0,
        stop_timeout: float = 20.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.binary = find_binary(binary)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._requested = (http_port, grpc_port)
        self.ports: ServerPorts | None = None
        self.process: subprocess.Popen | None = None
        self._lock_file = None
        self._log_file = None

    @property
    def url(self) -> str:
        if self.ports is None:
            raise RuntimeError("the server is not started")
        return f"http://{self.host}:{self.ports.http}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> WeaviateServer:
        """Start the server and wait until it is ready. Raises :class:`WeaviateStartError` with the log's tail."""
        if self.process is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self.ports = self._choose_ports()
            self._launch()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM, wait up to ``stop_timeout`` seconds, then SIGKILL. Safe to call twice."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    def __enter__(self) -> WeaviateServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def connect(self, **kwargs):
        """A weaviate-client v4 ``WeaviateClient`` connected to this server (the caller closes it)."""
        import weaviate

        assert self.ports is not None, "start() the server first"
        return weaviate.connect_to_local(
            host=self.host, port=self.ports.http, grpc_port=self.ports.grpc, skip_init_checks=True, **kwargs
        )

    # -- internals -------------------------------------------------------------------------------------------------
    def _take_lock(self) -> None:
        self._lock_file = open(self.data_dir / ".lock", "w")  # noqa: SIM115 - held for the server's lifetime
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise WeaviateStartError(
                f"Another Weaviate server already uses the data folder {self.data_dir}. Stop it, or give this one "
                "its own `data_dir`."
            ) from None

    def _choose_ports(self) -> ServerPorts:
        http, grpc = self._requested
        for name, port in (("http_port", http), ("grpc_port", grpc)):
            if port is not None and not port_is_free(port):
                raise WeaviateStartError(
                    f"Port {port} ({name}) is already in use, so Weaviate cannot listen on it. Stop what uses it "
                    f"(`ss -ltnp | grep {port}`), choose another `{name}`, or leave it unset to pick a free port."
                )
        remembered = self._remembered_ports()
        if remembered and all(port_is_free(p) for p in remembered.all()):
            if (http is None or http == remembered.http) and (grpc is None or grpc == remembered.grpc):
                return remembered
        taken: set[int] = set()
        http = http or free_port(taken)
        taken.add(http)
        grpc = grpc or free_port(taken | {http})
        taken |= {grpc}
        gossip = free_port_pair(taken)
        taken |= {gossip, gossip + 1}
        raft = free_port_pair(taken)
        ports = ServerPorts(http=http, grpc=grpc, gossip=gossip, raft=raft)
        (self.data_dir / "ports.json").write_text(json.dumps(asdict(ports)))
        return ports

    def _remembered_ports(self) -> ServerPorts | None:
        try:
            return ServerPorts(**json.loads((self.data_dir / "ports.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _launch(self) -> None:
        ports = self.ports
        env = {
            **os.environ,
            **SERVER_ENV,
            "PERSISTENCE_DATA_PATH": str(self.data_dir.resolve()),
            "GRPC_PORT": str(ports.grpc),
            "CLUSTER_GOSSIP_BIND_PORT": str(ports.gossip),
            "CLUSTER_DATA_BIND_PORT": str(ports.gossip + 1),
            "RAFT_PORT": str(ports.raft),
            "RAFT_INTERNAL_RPC_PORT": str(ports.raft + 1),
            "RAFT_JOIN": f"{NODE_NAME}:{ports.raft}",
        }
        command = [str(self.binary), "--host", self.host, "--port", str(ports.http), "--scheme", "http"]
        self.process, self._log_file = launch(command, env, self.log_path, cwd=self.data_dir)

    def _wait_ready(self) -> None:
        describe = f"The Weaviate server ({self.binary})"
        ready_url = f"{self.url}/v1/.well-known/ready"
        wait_until_ready(
            self.process, ready_url, self.startup_timeout, describe, self.log_path, WeaviateStartError, poll_s=0.2
        )
