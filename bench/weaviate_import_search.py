"""Import rate and search latency of a Weaviate-backed expert, against exact in-process search as the peer.

    .venv/bin/python bench/weaviate_import_search.py --sizes 10000 100000 --out docs/benchmarks.md

Synthetic unit vectors of dimension 384 (MiniLM's size) go into a fresh embedded server through the same
``WeaviateExpert.insert`` path ``index`` uses; searches use ``WeaviateExpert.search`` (one gRPC query per query, HNSW,
cosine). The peer is exact brute-force cosine search with numpy in the same process (what a FAISS flat index does), so
the ratio says what the server round trip and HNSW cost or save. The embedder's own cost (MiniLM on this CPU) is
measured separately, since it is the same for every backend.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from more_lightning.experts.corpus import CorpusRecord
from more_lightning.experts.embedders import TextEmbedder
from more_lightning.experts.server import WeaviateServer
from more_lightning.experts.text import TextExpert

DIM = 384
BATCHES = (1, 8, 64)


class PrecomputedQueries(TextExpert):
    """A text expert whose query vectors are given (the benchmark times search, not the embedder)."""

    def __init__(self, collection: str, queries: np.ndarray) -> None:
        super().__init__(collection=collection)
        self._queries = queries

    @property
    def embedder_id(self) -> str:
        return "synthetic"

    @property
    def dim(self) -> int:
        return DIM

    def embed_queries(self, queries, images=None) -> np.ndarray:
        return self._queries[: len(queries)]


def unit(rows: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((rows, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def bench_size(server: WeaviateServer, size: int, rng: np.random.Generator, repeats: int) -> list[dict]:
    vectors = unit(size, rng)
    queries = unit(max(BATCHES) * repeats, rng)
    client = server.connect()
    expert = PrecomputedQueries(f"Bench{size}", queries).bind(client, server.url)
    expert.ensure_collection(recreate=True)
    records = [CorpusRecord(f"v{i}", f"synthetic passage {i}") for i in range(size)]
    started = time.perf_counter()
    for start in range(0, size, 1000):
        errors = expert.insert(records[start : start + 1000], vectors[start : start + 1000])
        assert not errors, list(errors.values())[:3]
    import_rate = size / (time.perf_counter() - started)
    rows = []
    for batch in BATCHES:
        sequential, threaded, peer = [], [], []
        for r in range(repeats):  # the three variants interleaved, on the same queries
            q = queries[r * batch : (r + 1) * batch]
            expert._queries = q
            for threads, samples in ((1, sequential), (4, threaded)):
                expert.search_threads = threads
                t = time.perf_counter()
                expert.search([f"q{i}" for i in range(batch)], k=10)
                samples.append(time.perf_counter() - t)
            t = time.perf_counter()
            np.argpartition(-(q @ vectors.T), 10, axis=1)[:, :10]
            peer.append(time.perf_counter() - t)
        (p50, p95), (t50, t95), (peer50, _) = percentiles(sequential), percentiles(threaded), percentiles(peer)
        rows.append(
            {
                "size": size,
                "batch": batch,
                "import_rate": import_rate,
                "p50": p50,
                "p95": p95,
                "t50": t50,
                "t95": t95,
                "peer_p50": peer50,
            }
        )
    client.collections.delete(f"Bench{size}")
    client.close()
    return rows


def embedder_cost(count: int = 512) -> float:
    texts = [f"Passage {i}: a short sentence about topic number {i % 37} for timing." for i in range(count)]
    embedder = TextEmbedder()
    embedder.embed(texts[:8])
    started = time.perf_counter()
    embedder.embed(texts)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="append the table to this markdown file")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as data, WeaviateServer(data) as server:
        rows = [row for size in args.sizes for row in bench_size(server, size, rng, args.repeats)]
    rate = embedder_cost()
    lines = [
        f"## Weaviate expert: import and search ({date.today()})",
        "",
        f"Machine: {platform.machine()}, {__import__('os').cpu_count()} cores, no GPU. Weaviate v1.39.0 embedded, "
        f"HNSW cosine, dim {DIM}, k=10, {args.repeats} repeats per cell.",
        f"Command: `.venv/bin/python bench/weaviate_import_search.py --sizes {' '.join(map(str, args.sizes))}`",
        "",
        "| vectors | import (objects/s) | queries per call | sequential p50 / p95 ms | 4 threads p50 / p95 ms "
        "| numpy exact p50 ms | ratio p50 (4 threads / exact) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']:,} | {r['import_rate']:,.0f} | {r['batch']} | {1000 * r['p50']:.1f} / {1000 * r['p95']:.1f}"
            f" | {1000 * r['t50']:.1f} / {1000 * r['t95']:.1f} | {1000 * r['peer_p50']:.2f} "
            f"| {r['t50'] / r['peer_p50']:.1f} |"
        )
    lines += ["", f"Embedder alone (MiniLM, batch 64, CPU): {rate:,.0f} passages/s.", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with args.out.open("a") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
