"""``index`` and faults of the server: a Weaviate killed (SIGKILL) during an import keeps objects whose vectors never
reached the vector index; the rerun must not trust them. A run where rows failed does not exit 0, and a server that
stops answering is one error line."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from weaviate.exceptions import WeaviateBaseError

from more_lightning.experts.indexing import IndexingFailed, index, index_expert
from more_lightning.experts.server import WeaviateServer
from more_lightning.experts.text import TextExpert

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128


def _corpus(folder: Path, rows: int) -> Path:
    corpus = folder / "many.jsonl"
    lines = (
        json.dumps({"id": f"p{i}", "text": f"Passage {i} on topic {i % 7}, word {i * 7919 % 1000}."})
        for i in range(rows)
    )
    corpus.write_text("\n".join(lines) + "\n")
    return corpus


def _unsearchable(client, collection: str) -> set[str]:
    """Stored objects that the id filter or vector search (with their own vector) does not find."""
    expert = TextExpert(collection=collection).bind(client)
    stored = [str(o.uuid) for o in client.collections.use(collection).iterator(return_properties=[])]
    return expert.untrusted(stored, expert.existing_uuids(stored))


@pytest.mark.e2e
@pytest.mark.weaviate
def test_a_server_killed_during_an_import_leaves_no_unsearchable_row_after_the_rerun(tmp_path):
    corpus = _corpus(tmp_path, 4 * BATCH)
    data = tmp_path / "weaviate"
    server = WeaviateServer(data).start()
    config = tmp_path / "index.yaml"
    experts = [
        {
            "class_path": "more_lightning.experts.text.TextExpert",
            "init_args": {"collection": "Killed", "corpus": str(corpus)},
        }
    ]
    weaviate = {"mode": "local", "http_port": server.ports.http, "grpc_port": server.ports.grpc}
    config.write_text(yaml.safe_dump({"weaviate": weaviate, "experts": experts, "batch_size": BATCH}))
    command = [sys.executable, "-m", "more_lightning", "index", "--config", str(config)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = server.connect()
    try:
        count, deadline = 0, time.monotonic() + 300
        while count <= BATCH and process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(WeaviateBaseError):  # the collection may be half created
                count = client.collections.use("Killed").aggregate.over_all(total_count=True).total_count
            time.sleep(0.002)
        os.kill(server.process.pid, signal.SIGKILL)  # as soon as the second batch's objects land
    finally:
        client.close()
        process.kill()
        process.wait(30)
        server.stop()
    assert BATCH < count < 4 * BATCH, "the server was killed during the second batch"

    with WeaviateServer(data) as restarted:
        client = restarted.connect()
        try:
            broken = _unsearchable(client, "Killed")
            expert = TextExpert(collection="Killed", corpus=str(corpus)).bind(client)
            assert not expert.is_complete()
            report = index_expert(expert, batch_size=BATCH)
            assert report.repaired == len(broken) and report.failed == 0
            assert report.imported + report.already_present == 4 * BATCH == report.total_in_collection
            assert _unsearchable(client, "Killed") == set()
            assert expert.is_complete()
            again = index_expert(expert, batch_size=BATCH)
            assert (again.imported, again.repaired, again.already_present) == (0, 0, 4 * BATCH)
        finally:
            client.close()


@pytest.mark.integration
@pytest.mark.weaviate
def test_rows_that_fail_to_import_end_the_run_with_an_error(tmp_path, weaviate_server, monkeypatch, capsys):
    from more_lightning.experts.weaviate_expert import WeaviateExpert

    corpus = _corpus(tmp_path, 10)
    real_insert = WeaviateExpert.insert

    def disk_full_after_4(self, records, vectors):
        errors = real_insert(self, records[:4], vectors[:4])
        return {**errors, **{i: "rejected by Weaviate: no space left on device" for i in range(4, len(records))}}

    monkeypatch.setattr(WeaviateExpert, "insert", disk_full_after_4)
    weaviate = {"mode": "local", "http_port": weaviate_server.ports.http, "grpc_port": weaviate_server.ports.grpc}
    from more_lightning.experts.connection import WeaviateConfig

    expert = TextExpert(collection="DiskFull", corpus=str(corpus))
    with pytest.raises(IndexingFailed, match="6 rows failed to embed or import"):
        index([expert], WeaviateConfig(**weaviate), batch_size=10)
    monkeypatch.undo()
    client = weaviate_server.connect()
    try:
        expert.bind(client)
        assert not expert.is_complete()
        report = index_expert(expert, batch_size=10)
        assert (report.imported, report.already_present, report.failed) == (6, 4, 0) and expert.is_complete()
    finally:
        client.close()


@pytest.mark.integration
def test_a_server_that_stops_answering_during_index_is_one_error_line(tmp_path, weaviate_server, monkeypatch, capsys):
    from weaviate.exceptions import WeaviateRetryError

    from more_lightning import cli
    from more_lightning.experts import indexing

    def dies(*_, **__):
        raise WeaviateRetryError("failed to connect to all addresses", 3)

    monkeypatch.setattr(indexing, "index_expert", dies)
    config = tmp_path / "index.yaml"
    experts = [
        {
            "class_path": "more_lightning.experts.text.TextExpert",
            "init_args": {"collection": "X", "corpus": str(_corpus(tmp_path, 2))},
        }
    ]
    weaviate = {"mode": "local", "http_port": weaviate_server.ports.http, "grpc_port": weaviate_server.ports.grpc}
    config.write_text(yaml.safe_dump({"weaviate": weaviate, "experts": experts}))
    assert cli.main(["index", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1
    assert "stopped answering while indexing 'text retriever'" in err and "run `index` again" in err
