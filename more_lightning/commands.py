"""The subcommands of ``python -m more_lightning`` that are not LightningCLI's (one typed function each)."""

from __future__ import annotations

import signal
import time

from rich.console import Console

from more_lightning.data.jsonl import OnError
from more_lightning.experts.connection import WeaviateConfig, open_weaviate
from more_lightning.experts.weaviate_expert import WeaviateExpert


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


def index(
    experts: list[WeaviateExpert],
    weaviate: WeaviateConfig = WeaviateConfig(),
    batch_size: int = 64,
    on_error: OnError = "skip",
    recreate: bool = False,
) -> int:
    """Embed the experts' corpora and import them into their Weaviate collections (resumable, no duplicates).

    Args:
        experts: the experts to index (``class_path``/``init_args``), each with its ``corpus``.
        weaviate: how to reach Weaviate (default: the embedded server).
        batch_size: rows embedded and imported together.
        on_error: ``skip`` bad rows (reported at the end) or ``raise`` at the first one.
        recreate: drop each collection first and index from scratch.
    """
    from more_lightning.experts.indexing import index_expert, progress_bar, report_table

    with open_weaviate(weaviate) as client:
        reports = []
        with progress_bar() as progress:
            for expert in experts:
                expert.bind(client, weaviate.describe())
                reports.append(index_expert(expert, batch_size, on_error, recreate, progress))
        console = Console()
        console.print(report_table(reports))
        for report in reports:
            for failure in report.failures:
                console.print(f"[yellow]not indexed[/] {failure}")
    return 1 if any(r.failures for r in reports) and on_error == "raise" else 0


def demo() -> int:
    """The main job on the embedded defaults: start Weaviate, store and find vectors, run the tiny policy."""
    from more_lightning.demo import run_demo

    return run_demo()


COMMANDS = {
    "demo": demo,
    "index": index,
    "server": server,
    "install-weaviate": install_weaviate,
    "build-tiny-model": build_tiny_model,
}
