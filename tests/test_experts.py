"""Weaviate-backed experts and indexing, against the real server started by the test session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser
from weaviate.exceptions import WeaviateQueryError

from more_lightning.experts.base import ExpertUnavailable, NoneExpert
from more_lightning.experts.corpus import flatten_table, read_tables, table_passages
from more_lightning.experts.indexing import IndexingFailed, index_expert
from more_lightning.experts.server import WeaviateServer
from more_lightning.experts.table import TableExpert
from more_lightning.experts.text import TextExpert
from more_lightning.experts.text_image import TextImageExpert
from more_lightning.experts.weaviate_expert import CollectionMismatch, WeaviateExpert
from more_lightning.protocol.prompts import routing_system_prompt, sub_answer_prompt

pytestmark = pytest.mark.weaviate
ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "fixtures" / "corpus"
QA = [json.loads(line) for line in (CORPUS / "qa.jsonl").read_text().splitlines()]


def _experts(suffix: str) -> dict[str, WeaviateExpert]:
    return {
        "text retriever": TextExpert(
            collection=f"Text{suffix}", corpus=str(CORPUS / "passages.jsonl"), metadata_fields=["topic"]
        ),
        "table retriever": TableExpert(collection=f"Tables{suffix}", corpus=str(CORPUS / "tables.jsonl")),
        "text image retriever": TextImageExpert(
            collection=f"Images{suffix}",
            corpus=str(CORPUS / "image_captions.jsonl"),
            image_folder=str(CORPUS / "images"),
            alpha=0.3,
        ),
    }


@pytest.fixture(scope="module")
def indexed(weaviate_server):
    client = weaviate_server.connect()
    experts = _experts("Shared")
    reports = {}
    for expert in experts.values():
        expert.bind(client, weaviate_server.url)
        reports[expert.name] = index_expert(expert, batch_size=8, recreate=True)
    yield experts, reports
    client.close()


@pytest.mark.integration
def test_index_imports_every_row(indexed):
    _, reports = indexed
    assert {name: (r.imported, r.total_in_collection, r.failures) for name, r in reports.items()} == {
        "text retriever": (30, 30, []),
        "table retriever": (6, 6, []),
        "text image retriever": (12, 12, []),
    }


@pytest.mark.integration
@pytest.mark.parametrize("row", QA, ids=[row["source_id"] for row in QA])
def test_each_expert_finds_the_answering_passage_in_its_top_5(indexed, row):
    experts, _ = indexed
    image = str(CORPUS / "images" / row["image"]) if "image" in row else None
    (passages,) = experts[row["expert"]].search([row["question"]], images=[image], k=5)
    assert row["source_id"] in [p.id for p in passages]
    assert all(p.expert == row["expert"] and p.text for p in passages)


@pytest.mark.integration
def test_search_is_batched_and_ranked(indexed):
    experts, _ = indexed
    results = experts["text retriever"].search(["Who directed Alien?", "Who wrote Hamlet?"], k=3)
    assert [r[0].id for r in results] == ["alien", "hamlet"]
    assert results[0][0].score >= results[0][1].score
    assert results[0][0].text.startswith("Alien (film) Alien is a 1979")


@pytest.mark.integration
def test_table_text_uses_the_official_markers(indexed):
    experts, _ = indexed
    (hits,) = experts["table retriever"].search(["highest mountains in asia"], k=1)
    assert hits[0].text.startswith(
        "[Title] Highest mountains [Section title] Asia [Caption] Heights in metres "
        "[Header] mountain | height m | country [Rows] [Row] Everest | 8849 | Nepal"
    )


@pytest.mark.integration
def test_a_table_split_by_rows_finds_the_row_a_question_names(weaviate_client):
    expert = TableExpert(
        collection="TablesByRow", corpus=str(CORPUS / "tables.jsonl"), rows_per_passage=1, search_mode="hybrid"
    ).bind(weaviate_client)
    report = index_expert(expert, batch_size=8, recreate=True)
    whole_tables = read_tables(CORPUS / "tables.jsonl", on_error="raise")
    assert report.imported == sum(text.count("[Row] ") for text in (r.text for r in whole_tables)) > len(whole_tables)
    (hits,) = expert.search(["In which year was Blade Runner released?"], k=1)
    assert hits[0].id == "films#rows-2-2"
    assert hits[0].text == (
        "[Title] Science fiction films [Section title] 1970s and 1980s [Caption] Directors and release years "
        "[Header] film | director | year [Rows] [Row] Blade Runner | Ridley Scott | 1982"
    )


@pytest.mark.unit
def test_table_passages_keep_every_row_once():
    rows = [[str(i), str(i * i)] for i in range(7)]
    passages = table_passages("t", "Squares", ["n", "n^2"], rows, max_rows=6, rows_per_passage=4)
    assert [passage_id for passage_id, _ in passages] == ["t#rows-1-4", "t#rows-5-6"]
    assert [text.count("[Row] ") for _, text in passages] == [4, 2]
    assert table_passages("t", "Squares", ["n", "n^2"], rows) == [("t", flatten_table("Squares", ["n", "n^2"], rows))]
    with pytest.raises(ValueError, match="rows_per_passage"):
        TableExpert(corpus="tables.jsonl", rows_per_passage=0)


@pytest.mark.integration
def test_bm25_hybrid_and_filters(indexed, weaviate_server):
    experts, _ = indexed
    client = experts["text retriever"].client
    common = {"collection": "TextShared", "corpus": str(CORPUS / "passages.jsonl")}
    bm25 = TextExpert(search_mode="bm25", **common).bind(client)
    assert bm25.search(["penicillin fleming"], k=1)[0][0].id == "penicillin"
    hybrid = TextExpert(search_mode="hybrid", alpha=0.5, **common).bind(client)
    assert hybrid.search(["Who discovered penicillin?"], k=1)[0][0].id == "penicillin"
    science = TextExpert(filters={"topic": "science"}, **common).bind(client)
    hits = science.search(["Who directed Alien?"], k=10)[0]
    assert hits and {h.id for h in hits} <= {"photosynthesis", "dna", "penicillin", "volcano", "mars"}


@pytest.mark.unit
def test_the_none_expert_returns_nothing():
    assert NoneExpert().search(["anything", "else"]) == [[], []]


@pytest.mark.integration
def test_reindexing_imports_nothing(indexed):
    experts, _ = indexed
    for expert in experts.values():
        report = index_expert(expert, batch_size=8)
        assert (report.imported, report.already_present) == (0, report.rows)
        assert report.total_in_collection == report.rows


class _InterruptAfter:
    """Stands in for the progress bar and raises Ctrl-C after ``batches`` batches."""

    def __init__(self, batches: int) -> None:
        self.left = batches

    def add_task(self, *args, **kwargs):
        return 0

    def advance(self, task, rows):
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


@pytest.mark.integration
def test_interrupted_index_resumes_to_the_same_count(weaviate_client):
    expert = TextExpert(collection="TextResume", corpus=str(CORPUS / "passages.jsonl")).bind(weaviate_client)
    with pytest.raises(KeyboardInterrupt):
        index_expert(expert, batch_size=4, recreate=True, progress=_InterruptAfter(3))
    assert expert.count() == 12
    report = index_expert(expert, batch_size=4)
    assert (report.already_present, report.imported, expert.count()) == (12, 18, 30)


def _write_index_config(path: Path, server: WeaviateServer, corpus: Path, collection: str) -> Path:
    config = {
        "weaviate": {"mode": "local", "http_port": server.ports.http, "grpc_port": server.ports.grpc},
        "experts": [
            {
                "class_path": "more_lightning.experts.text.TextExpert",
                "init_args": {"collection": collection, "corpus": str(corpus)},
            }
        ],
        "batch_size": 4,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _count_if_ready(client, name: str) -> int:
    """Objects in a collection, or 0 while it is not created or its shard is still being set up."""
    if not client.collections.exists(name):
        return 0
    try:
        return client.collections.use(name).aggregate.over_all(total_count=True).total_count
    except WeaviateQueryError:  # "tried to browse non-existing index": the schema exists, the shard not yet
        return 0


@pytest.mark.e2e
def test_index_killed_half_way_then_run_again(tmp_path, weaviate_server, weaviate_client, run_cli):
    corpus = tmp_path / "many.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "text": f"Passage number {i} about topic {i % 7}."}) + "\n" for i in range(400)
        )
    )
    config = _write_index_config(tmp_path / "index.yaml", weaviate_server, corpus, "TextKilled")
    command = [sys.executable, "-m", "more_lightning", "index", "--config", str(config)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    count_at_kill = 0
    deadline = time.monotonic() + 180
    while process.poll() is None and time.monotonic() < deadline:
        count_at_kill = _count_if_ready(weaviate_client, "TextKilled")
        if count_at_kill >= 40:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait(30)
    assert 0 < count_at_kill < 400, "the run was killed half way"
    finished = run_cli(*command[3:], cwd=ROOT)  # only the killed run needs a process of its own
    assert finished.returncode == 0, finished.stderr[-2000:]
    collection = weaviate_client.collections.use("TextKilled")
    assert collection.aggregate.over_all(total_count=True).total_count == 400
    ids = {o.properties["source_id"] for o in collection.iterator(return_properties=["source_id"])}
    assert ids == {f"p{i}" for i in range(400)}


# --- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_bad_rows_are_reported_with_their_line_and_the_run_goes_on(tmp_path, weaviate_client):
    corpus = tmp_path / "passages.jsonl"
    corpus.write_text(
        "\n".join(
            [
                json.dumps({"id": "ok1", "text": "A fine passage."}),
                json.dumps({"id": "no_text", "title": "Empty"}),
                json.dumps(
                    {"id": "short_vector", "text": "Has a precomputed vector of the wrong size.", "vector": [0.1, 0.2]}
                ),
                json.dumps({"id": "ok2", "text": "Another fine passage."}),
            ]
        )
        + "\n"
    )
    expert = TextExpert(collection="TextBadRows", corpus=str(corpus)).bind(weaviate_client)
    report = index_expert(expert, recreate=True)
    assert report.imported == 2 and expert.count() == 2
    assert f"{corpus}:2: field 'text': missing" in report.failures
    assert any(
        f.startswith(f"{corpus}:3: vector has 2 dimensions, the collection expects 384") for f in report.failures
    )
    strict = tmp_path / "strict.jsonl"
    strict.write_text("\n".join(corpus.read_text().splitlines()[2:]) + "\n")  # the wrong-size vector is line 1
    expert = TextExpert(collection="TextBadRowsStrict", corpus=str(strict)).bind(weaviate_client)
    with pytest.raises(IndexingFailed, match=f"{strict}:1: vector has 2 dimensions"):
        index_expert(expert, recreate=True, on_error="raise")


@pytest.mark.integration
def test_an_unreadable_image_names_its_row(tmp_path, weaviate_client):
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    (tmp_path / "good.png").write_bytes((CORPUS / "images" / "red_circle.png").read_bytes())
    captions = tmp_path / "captions.jsonl"
    captions.write_text(
        json.dumps({"id": "broken", "file": "broken.png", "caption": "a broken image"})
        + "\n"
        + json.dumps({"id": "good", "file": "good.png", "caption": "a red circle"})
        + "\n"
    )
    expert = TextImageExpert(collection="ImagesBroken", corpus=str(captions)).bind(weaviate_client)
    report = index_expert(expert, recreate=True)
    assert report.imported == 1
    (failure,) = report.failures
    assert failure.startswith(f"{captions}:1: field 'file': image {tmp_path / 'broken.png'}: not an image")


@pytest.mark.integration
def test_a_collection_with_another_vector_size_is_refused(weaviate_client):
    TextExpert(collection="TextSizeClash", corpus="unused").bind(weaviate_client).ensure_collection(recreate=True)
    clip = TextImageExpert(collection="TextSizeClash").bind(weaviate_client)
    with pytest.raises(CollectionMismatch, match="'TextSizeClash' already exists with vectors of size 384"):
        clip.ensure_collection()


@pytest.mark.integration
def test_a_pool_refuses_a_filled_collection_indexed_by_another_embedder(weaviate_client, weaviate_server):
    from more_lightning.experts.connection import WeaviateConfig
    from more_lightning.experts.pool import ExpertPool

    images = _experts("EmbedderClash")["text image retriever"]
    index_expert(images.bind(weaviate_client), recreate=True)
    description = json.loads(images.collection.config.get().description)
    images.collection.config.update(description=json.dumps({**description, "embedder": "open_clip:tiny-clip:random"}))
    server = WeaviateConfig(mode="local", http_port=weaviate_server.ports.http, grpc_port=weaviate_server.ports.grpc)
    pool = ExpertPool([_experts("EmbedderClash")["text image retriever"]], server)
    with pytest.raises(CollectionMismatch, match="embedder 'open_clip:tiny-clip:random'.*recreate: true"):
        pool.open()
    images.collection.config.update(description="a collection someone else made")
    with ExpertPool([_experts("EmbedderClash")["text image retriever"]], server) as opened:
        assert opened.search([("text image retriever", "a red circle", None)], 2)[0], "searched as it is"


@pytest.mark.integration
def test_server_gone_during_search_names_the_url(tmp_path):
    with WeaviateServer(tmp_path) as server:
        client = server.connect()
        expert = TextExpert(collection="Gone", corpus=str(CORPUS / "passages.jsonl"), retries=2, retry_delay=0.05)
        expert.bind(client, server.url)
        index_expert(expert)
        assert expert.search(["Who wrote Hamlet?"], k=1)[0][0].id == "hamlet"
        url = server.url
    with pytest.raises(ExpertUnavailable, match=f"Weaviate at {url} did not answer after 2 attempts"):
        expert.search(["Who wrote Hamlet?"])
    client.close()


# --- experts from YAML --------------------------------------------------------------------------------------------
FOURTH_EXPERT_YAML = """
experts:
  - class_path: more_lightning.experts.text.TextExpert
    init_args: {collection: YamlText, corpus: tests/fixtures/corpus/passages.jsonl}
  - class_path: more_lightning.experts.table.TableExpert
    init_args: {collection: YamlTables, corpus: tests/fixtures/corpus/tables.jsonl}
  - class_path: more_lightning.experts.text.TextExpert
    init_args:
      name: science retriever
      prefix: scr
      title: Science Retriever
      guideline: For questions about natural science
      collection: YamlScience
      corpus: tests/fixtures/corpus/passages.jsonl
      filters: {topic: science}
      metadata_fields: [topic]
"""


@pytest.mark.integration
def test_a_fourth_expert_is_a_config_change_only(tmp_path, weaviate_client, monkeypatch):
    monkeypatch.chdir(ROOT)
    parser = ArgumentParser()
    parser.add_argument("--experts", type=list[WeaviateExpert])
    config = tmp_path / "experts.yaml"
    config.write_text(FOURTH_EXPERT_YAML)
    parser.add_argument("--config", action="config")
    experts = parser.instantiate_classes(parser.parse_args(["--config", str(config)])).experts
    assert [e.name for e in experts] == ["text retriever", "table retriever", "science retriever"]
    for expert in experts:
        expert.bind(weaviate_client)
        assert not index_expert(expert, recreate=True).failures
    science = experts[2]
    assert science.search(["What does DNA carry?"], k=1)[0][0].id == "dna"
    specs = [e.spec for e in experts]
    assert "Text Retriever, Table Retriever, Science Retriever." in routing_system_prompt(specs)
    passages = {"science retriever": science.search(["What does DNA carry?"], k=2)[0]}
    assert (
        "`scr` means this info is from science retriever:scr-0: DNA"
        in sub_answer_prompt("what does dna carry?", passages, experts=specs).problem
    )


@pytest.mark.unit
def test_the_shipped_index_config_parses():
    from more_lightning.cli import build_parser

    parsed = build_parser().parse_args(["index", "--config", str(ROOT / "configs" / "tiny" / "index.yaml")])
    assert [e["class_path"].rsplit(".", 1)[1] for e in parsed.index.experts] == [
        "TextExpert",
        "TextImageExpert",
        "TableExpert",
    ]
