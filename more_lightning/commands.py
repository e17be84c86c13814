"""The subcommands of ``python -m more_lightning`` that are not LightningCLI's (one typed function each)."""

from __future__ import annotations

import signal
import time


def install_weaviate(force: bool = False) -> int:
    """Build the Weaviate server binary into the cache with `go install` (no-op when already built).

    Args:
        force: rebuild even if the binary exists.
    """
    from more_lightning.experts.binary import install_binary

    print(install_binary(force=force))
    return 0


def server(data_dir: str | None = None, http_port: int | None = None, grpc_port: int | None = None) -> int:
    """Run the embedded Weaviate server in the foreground until Ctrl-C (for `weaviate.mode: local` users).

    Args:
        data_dir: persistence folder (default: the cache's default data folder).
        http_port: HTTP port (default: a free one).
        grpc_port: gRPC port (default: a free one).
    """
    from more_lightning.experts.connection import WeaviateConfig
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


def build_tiny_model(name: str = "qwen2.5-vl", seed: int = 0) -> int:
    """Build (once) a tiny random model that configs can name as `tiny:<name>`, and print its folder.

    Args:
        name: which tiny model.
        seed: weight-initialisation seed.
    """
    from more_lightning.policy.tiny import tiny_model_path

    print(tiny_model_path(name, seed=seed))
    return 0


def demo() -> int:
    """The main job on the embedded defaults: start Weaviate, store and find vectors, run the tiny policy."""
    from more_lightning.demo import run_demo

    return run_demo()


COMMANDS = {
    "demo": demo,
    "server": server,
    "install-weaviate": install_weaviate,
    "build-tiny-model": build_tiny_model,
}
