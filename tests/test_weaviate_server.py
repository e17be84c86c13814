"""The embedded Weaviate server: real binary, real client, real data folder."""

from __future__ import annotations

import socket
import stat

import pytest
from weaviate.classes.config import Configure, DataType, Property
from weaviate.classes.data import DataObject
from weaviate.classes.query import MetadataQuery
from weaviate.util import generate_uuid5

from more_lightning.experts.binary import WeaviateBinaryNotFound
from more_lightning.experts.connection import WeaviateConfig, WeaviateUnreachable, open_weaviate
from more_lightning.experts.ports import free_port
from more_lightning.experts.server import WeaviateServer, WeaviateStartError
from tests.helpers import child_processes_named, weaviate_processes_serving

pytestmark = [pytest.mark.integration, pytest.mark.weaviate]

DOCS = {
    "d1": ("the cat sat on the mat", [1.0, 0.0, 0.0, 0.0]),
    "d2": ("stock markets fell sharply today", [0.0, 1.0, 0.0, 0.0]),
    "d3": ("a kitten sleeps on a rug", [0.9, 0.1, 0.0, 0.0]),
}


def _fill(client, name: str = "Docs"):
    if client.collections.exists(name):
        client.collections.delete(name)
    collection = client.collections.create(
        name,
        properties=[Property(name="doc_id", data_type=DataType.TEXT), Property(name="text", data_type=DataType.TEXT)],
        vector_config=Configure.Vectors.self_provided(),
    )
    result = collection.data.insert_many(
        [
            DataObject(properties={"doc_id": k, "text": text}, vector=vector, uuid=generate_uuid5(f"Docs:{k}"))
            for k, (text, vector) in DOCS.items()
        ]
    )
    assert not result.has_errors, result.errors
    return collection


def _count(client, name: str = "Docs") -> int:
    return client.collections.use(name).aggregate.over_all(total_count=True).total_count


def test_collection_found_by_near_vector_and_bm25(weaviate_client):
    collection = _fill(weaviate_client)
    hits = collection.query.near_vector([1.0, 0.05, 0.0, 0.0], limit=2, return_metadata=MetadataQuery(distance=True))
    assert [o.properties["doc_id"] for o in hits.objects] == ["d1", "d3"]
    assert hits.objects[0].metadata.distance < hits.objects[1].metadata.distance
    bm25 = collection.query.bm25("stock markets", limit=3)
    assert [o.properties["doc_id"] for o in bm25.objects] == ["d2"]


def test_restart_on_same_data_folder_keeps_objects(tmp_path):
    with WeaviateServer(tmp_path) as server:
        first_url = server.url
        with server.connect() as client:
            _fill(client)
            assert _count(client) == 3
    assert not weaviate_processes_serving(tmp_path)
    with WeaviateServer(tmp_path) as server:
        assert server.url == first_url, "the remembered ports are reused"
        with server.connect() as client:
            assert _count(client) == 3
            hits = client.collections.use("Docs").query.near_vector([0.0, 1.0, 0.0, 0.0], limit=1)
            assert hits.objects[0].properties["doc_id"] == "d2"


def test_two_servers_side_by_side(tmp_path, weaviate_server):
    with WeaviateServer(tmp_path / "second") as second:
        assert second.ports.http != weaviate_server.ports.http
        assert not set(second.ports.all()) & set(weaviate_server.ports.all())
        with second.connect() as a, weaviate_server.connect() as b:
            _fill(a, "OnlyHere")
            assert a.collections.exists("OnlyHere")
            assert not b.collections.exists("OnlyHere")


def test_open_weaviate_embedded_and_local_modes(tmp_path, weaviate_server):
    with open_weaviate(WeaviateConfig(mode="embedded", data_dir=str(tmp_path))) as client:
        assert client.is_ready()
    local = WeaviateConfig(mode="local", http_port=weaviate_server.ports.http, grpc_port=weaviate_server.ports.grpc)
    with open_weaviate(local) as client:
        assert client.get_meta()["version"] == "1.39.0"


def test_unreachable_local_server_names_the_url_and_the_fix():
    port, grpc_port = free_port(), free_port()
    while grpc_port == port:
        grpc_port = free_port()
    config = WeaviateConfig(mode="local", http_port=port, grpc_port=grpc_port, connect_retries=2, retry_delay=0.05)
    with pytest.raises(WeaviateUnreachable) as error:
        with open_weaviate(config):
            pass
    message = str(error.value)
    assert f"http://127.0.0.1:{port}" in message and "after 2 attempts" in message and "embedded" in message


def test_port_already_taken_is_a_clear_error_and_leaves_no_process(tmp_path):
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = WeaviateServer(tmp_path, http_port=port)
        with pytest.raises(WeaviateStartError, match=f"Port {port} \\(http_port\\) is already in use"):
            server.start()
    assert server.process is None
    assert not weaviate_processes_serving(tmp_path)


def test_missing_binary_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MORE_LIGHTNING_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MORE_LIGHTNING_WEAVIATE_BIN", raising=False)
    with pytest.raises(WeaviateBinaryNotFound) as error:
        WeaviateServer(tmp_path / "data", binary=tmp_path / "no-such-weaviate")
    assert "make setup" in str(error.value) and "client_embedded" in str(error.value)


def _script(path, body: str):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_server_that_dies_at_start_reports_its_log(tmp_path):
    # A crashing server binary is a fault no user runs on purpose, so a stand-in script is fair here.
    crashing = _script(tmp_path / "crashing-weaviate", 'echo "fatal: could not open raft database" >&2\nexit 3\n')
    server = WeaviateServer(tmp_path / "data", binary=crashing)
    with pytest.raises(WeaviateStartError) as error:
        server.start()
    assert "exited with code 3" in str(error.value)
    assert "could not open raft database" in str(error.value)
    assert server.process is None


def test_server_that_never_gets_ready_is_killed_after_the_timeout(tmp_path):
    hanging = _script(tmp_path / "hanging-weaviate", "trap '' TERM\nsleep 600\n")
    server = WeaviateServer(tmp_path / "data", binary=hanging, startup_timeout=1.0, stop_timeout=1.0)
    with pytest.raises(WeaviateStartError, match="not ready after 1 s"):
        server.start()
    assert not child_processes_named(str(hanging))


def test_a_data_folder_serves_one_server_at_a_time(tmp_path):
    with WeaviateServer(tmp_path):
        with pytest.raises(WeaviateStartError, match="already uses the data folder"):
            WeaviateServer(tmp_path).start()
