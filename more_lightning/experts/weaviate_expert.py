"""An expert backed by one Weaviate collection with self-provided vectors (weaviate-client v4 collections API).

Subclasses say how to read their corpus and how to embed records and queries; this class owns the collection:
creating it (and refusing one that exists with another vector size), importing with deterministic UUIDs
(``uuid5`` of expert name + source id, so re-running imports nothing twice and an interrupted run resumes), and
searching by vector, BM25 or hybrid, with equality filters on stored properties and bounded retries.
"""

from __future__ import annotations

import json
import logging
import time
from abc import abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np

from more_lightning.errors import SettingError, UserError
from more_lightning.experts.base import Expert, ExpertUnavailable
from more_lightning.experts.corpus import CorpusRecord
from more_lightning.protocol.jsonl import OnError, ReadResult
from more_lightning.protocol.records import Passage

log = logging.getLogger(__name__)

SearchMode = Literal["vector", "bm25", "hybrid"]


class CollectionMismatch(UserError, ValueError):
    """The collection exists but was built for another vector size or embedder."""


class WeaviateExpert(Expert):
    """A retrieval expert whose passages live in one Weaviate collection.

    Args:
        name: the protocol token, e.g. ``text retriever``.
        prefix: the passage prefix, e.g. ``ter``.
        collection: the Weaviate collection name (capitalised, e.g. ``TextPassages``).
        corpus: the corpus file that ``index`` reads (not needed for search).
        search_mode: ``vector`` (dense), ``bm25`` (keyword) or ``hybrid`` (both, fused).
        alpha: hybrid weight of the vector score (1 = vector only, 0 = BM25 only).
        filters: equality filters on stored properties applied to every search, e.g. ``{"source": "wiki"}``.
        retries: liveness checks before a search gives up with :class:`ExpertUnavailable`.
        retry_delay: seconds before the second check (doubles each time).
        search_threads: queries of one ``search`` call sent concurrently (gRPC; 1 = one after another).
        title: how the routing prompt names it.
        guideline: when to choose it (routing prompt).
    """

    def __init__(
        self,
        name: str,
        prefix: str,
        collection: str,
        corpus: str | None = None,
        search_mode: SearchMode = "vector",
        alpha: float = 0.5,
        filters: dict[str, str] | None = None,
        retries: int = 3,
        retry_delay: float = 0.5,
        search_threads: int = 4,
        title: str | None = None,
        guideline: str = "",
    ) -> None:
        super().__init__(name=name, prefix=prefix, title=title, guideline=guideline)
        if search_mode not in ("vector", "bm25", "hybrid"):
            raise SettingError(f"search_mode must be vector, bm25 or hybrid, not {search_mode!r}")
        self.collection_name = collection
        self.corpus = corpus
        self.search_mode = search_mode
        self.alpha = alpha
        self.filters = dict(filters or {})
        self.retries = retries
        self.retry_delay = retry_delay
        self.search_threads = search_threads
        self._client = None
        self._where = "(not connected)"

    # -- what subclasses provide ---------------------------------------------------------------------------------
    @property
    @abstractmethod
    def embedder_id(self) -> str:
        """Names the embedding space (model + settings); stored with the collection."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """The vector size."""

    @abstractmethod
    def read_corpus(self, on_error: OnError = "skip") -> ReadResult[CorpusRecord]:
        """The records of :attr:`corpus`."""

    @abstractmethod
    def embed_records(self, records: Sequence[CorpusRecord]) -> tuple[np.ndarray, dict[int, str]]:
        """Vectors for ``records`` (rows in order, for the ones that worked) and ``{index: error}`` for the rest."""

    @abstractmethod
    def embed_queries(self, queries: Sequence[str], images: Sequence[str | None] | None = None) -> np.ndarray:
        """One unit vector per query."""

    def extra_properties(self) -> list:
        """Stored properties beyond ``source_id``, ``text`` and ``title`` (weaviate ``Property`` objects)."""
        return []

    # -- the collection ------------------------------------------------------------------------------------------
    def bind(self, client, where: str = "") -> WeaviateExpert:
        """Use ``client`` (a connected weaviate-client v4 client); ``where`` names the server in errors."""
        self._client = client
        self._where = where or "the configured Weaviate server"
        return self

    @property
    def client(self):
        """The bound weaviate-client client."""
        if self._client is None:
            raise RuntimeError(f"expert {self.name!r} is not connected to Weaviate (call bind(client))")
        return self._client

    @property
    def collection(self):
        return self.client.collections.use(self.collection_name)

    def _description(self, complete: bool = False) -> str:
        """The collection's description: which expert and embedder made it, and whether its last ``index`` run
        finished with every row imported (``complete``)."""
        return json.dumps(
            {
                "more_lightning_expert": type(self).__name__,
                "embedder": self.embedder_id,
                "dim": self.dim,
                "complete": complete,
            }
        )

    def _stored_description(self) -> dict:
        try:
            return json.loads(self.collection.config.get().description or "")
        except ValueError:
            return {}

    def is_complete(self) -> bool:
        """Whether the last ``index`` run into this collection finished with every row imported (collections made
        before this flag existed count as complete)."""
        return bool(self._stored_description().get("complete", True))

    def mark_complete(self, complete: bool) -> None:
        """Record whether an ``index`` run finished cleanly (``False`` while one runs: a server killed during an
        import can keep objects whose vectors never reached the vector index)."""
        self.collection.config.update(description=self._description(complete))

    def ensure_collection(self, recreate: bool = False) -> None:
        """Create the collection if missing; check that an existing one matches this expert's embedder."""
        from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances

        collections = self.client.collections
        if recreate and collections.exists(self.collection_name):
            collections.delete(self.collection_name)
        if collections.exists(self.collection_name):
            self.check_embedder()
            return
        collections.create(
            self.collection_name,
            description=self._description(),
            properties=[
                Property(name="source_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
                Property(name="text", data_type=DataType.TEXT),
                Property(name="title", data_type=DataType.TEXT),
                *self.extra_properties(),
            ],
            vector_config=Configure.Vectors.self_provided(
                vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
            ),
        )

    def check_embedder(self, foreign_ok: bool = False) -> None:
        """Raise :class:`CollectionMismatch` unless the existing collection was indexed with this expert's embedder
        (its vector size and ``embedder_id``): vectors of another embedder would be searched as noise. ``foreign_ok``:
        a collection that more_lightning did not make (no description of ours) passes, to be searched as it is."""
        stored = self._stored_description()
        if foreign_ok and "more_lightning_expert" not in stored:
            return
        if stored.get("dim") != self.dim or stored.get("embedder") != self.embedder_id:
            raise CollectionMismatch(
                f"Collection {self.collection_name!r} already exists with vectors of size {stored.get('dim')} "
                f"(embedder {stored.get('embedder')!r}), but expert {self.name!r} makes vectors of size {self.dim} "
                f"(embedder {self.embedder_id!r}). Use another `collection` name, or re-index with `recreate: true`."
            )

    def count(self) -> int:
        return self.collection.aggregate.over_all(total_count=True).total_count

    def uuid_for(self, source_id: str) -> str:
        from weaviate.util import generate_uuid5

        return str(generate_uuid5(source_id, f"{self.name}\x1f"))

    def existing_uuids(self, uuids: Sequence[str]) -> set[str]:
        """Which of ``uuids`` are already stored."""
        from weaviate.classes.query import Filter

        if not uuids:
            return set()
        found = self.collection.query.fetch_objects(
            filters=Filter.by_id().contains_any(list(uuids)), limit=len(uuids), return_properties=[]
        )
        return {str(o.uuid) for o in found.objects}

    def unsearchable(self, uuids: Sequence[str]) -> set[str]:
        """Which stored ``uuids`` vector search does not find with their own vector (no vector, or a vector that is
        not in the vector index: what a server killed during an import leaves)."""
        from weaviate.classes.query import Filter, MetadataQuery

        if not uuids:
            return set()
        stored = self.collection.query.fetch_objects(
            filters=Filter.by_id().contains_any(list(uuids)),
            limit=len(uuids),
            include_vector=True,
            return_properties=[],
        )

        def found(obj) -> bool:
            vector = (obj.vector or {}).get("default")
            if not vector:
                return False
            nearest = self.collection.query.near_vector(
                vector, limit=1, return_properties=[], return_metadata=MetadataQuery(distance=True)
            ).objects
            return bool(nearest) and (
                str(nearest[0].uuid) == str(obj.uuid) or (nearest[0].metadata.distance or 0) < 1e-6
            )

        with ThreadPoolExecutor(max(1, self.search_threads)) as pool:
            searchable = list(pool.map(found, stored.objects))
        return {str(o.uuid) for o, ok in zip(stored.objects, searchable, strict=True) if not ok}

    def untrusted(self, uuids: Sequence[str], present: set[str]) -> set[str]:
        """The stored objects among ``uuids`` that a killed import may have left half-indexed: the ``present`` ones
        (found by the id filter) that vector search misses, and the others that exist all the same (the filter's
        index lost them)."""
        lost = {uuid for uuid in uuids if uuid not in present and self.collection.data.exists(uuid)}
        return self.unsearchable(sorted(present)) | lost

    def delete(self, uuids: Sequence[str]) -> None:
        """Delete the objects ``uuids``, one by one by id (an id filter may miss objects of a killed import)."""
        for uuid in uuids:
            self.collection.data.delete_by_id(uuid)

    def insert(self, records: Sequence[CorpusRecord], vectors: Sequence[np.ndarray]) -> dict[int, str]:
        """Store ``records`` with ``vectors``; returns ``{index: error}`` for objects Weaviate rejected."""
        from weaviate.classes.data import DataObject

        errors: dict[int, str] = {}
        objects, positions = [], []
        for i, (record, vector) in enumerate(zip(records, vectors, strict=True)):
            if len(vector) != self.dim:
                errors[i] = f"vector has {len(vector)} dimensions, the collection expects {self.dim}"
                continue
            properties = {"source_id": record.source_id, "text": record.text, "title": "", **record.properties}
            objects.append(
                DataObject(
                    properties=properties, vector=[float(v) for v in vector], uuid=self.uuid_for(record.source_id)
                )
            )
            positions.append(i)
        if objects:
            from weaviate.exceptions import WeaviateInsertManyAllFailedError

            try:
                result = self.collection.data.insert_many(objects)
            except WeaviateInsertManyAllFailedError as error:
                errors.update({position: f"rejected by Weaviate: {error}" for position in positions})
            else:
                for position, error in result.errors.items():
                    errors[positions[position]] = f"rejected by Weaviate: {error.message}"
        return errors

    # -- search --------------------------------------------------------------------------------------------------
    def _filter(self):
        from weaviate.classes.query import Filter

        if not self.filters:
            return None
        return Filter.all_of([Filter.by_property(k).equal(v) for k, v in self.filters.items()])

    def _query_once(self, query: str, vector: np.ndarray | None, k: int):
        from weaviate.classes.query import MetadataQuery

        q = self.collection.query
        metadata = MetadataQuery(distance=True, score=True)
        common = {"limit": k, "filters": self._filter(), "return_metadata": metadata}
        if self.search_mode == "bm25":
            return q.bm25(query, **common)
        if self.search_mode == "hybrid":
            return q.hybrid(query, vector=vector.tolist(), alpha=self.alpha, **common)
        return q.near_vector(vector.tolist(), **common)

    def _ensure_live(self) -> None:
        """Fail fast, naming the server, when Weaviate is down (weaviate-client itself would back off for ~60 s)."""
        client = self.client
        delay = self.retry_delay
        for attempt in range(1, self.retries + 1):
            if client.is_live():
                return
            if attempt < self.retries:
                log.warning(
                    "expert %s: Weaviate at %s is not live (attempt %d/%d)",
                    self.name,
                    self._where,
                    attempt,
                    self.retries,
                )
                time.sleep(delay)
                delay *= 2
        raise ExpertUnavailable(
            f"Expert {self.name!r}: Weaviate at {self._where} did not answer after {self.retries} attempts. "
            "Is the server running? Check the `weaviate` config (mode, host, ports), or restart the server."
        )

    def _query(self, query: str, vector: np.ndarray | None, k: int):
        from weaviate.exceptions import WeaviateBaseError

        try:
            return self._query_once(query, vector, k)
        except WeaviateBaseError as error:
            raise ExpertUnavailable(
                f"Expert {self.name!r}: searching collection {self.collection_name!r} on Weaviate at {self._where} "
                f"failed ({type(error).__name__}: {error})."
            ) from error

    def search(
        self, queries: Sequence[str], images: Sequence[str | None] | None = None, k: int = 10
    ) -> list[list[Passage]]:
        """Top-``k`` passages per query: queries are lower-cased and stripped, embedded in one batch."""
        cleaned = [q.lower().strip() for q in queries]
        self._ensure_live()
        vectors = self.embed_queries(cleaned, images) if self.search_mode != "bm25" else [None] * len(cleaned)

        def one(query: str, vector: np.ndarray | None) -> list[Passage]:
            response = self._query(query, vector, k)
            return [
                Passage(
                    id=str(o.properties.get("source_id")),
                    text=str(o.properties.get("text")),
                    expert=self.name,
                    score=o.metadata.score if self.search_mode != "vector" else 1.0 - (o.metadata.distance or 0.0),
                )
                for o in response.objects
            ]

        if self.search_threads <= 1 or len(cleaned) == 1:
            return [one(q, v) for q, v in zip(cleaned, vectors, strict=True)]
        with ThreadPoolExecutor(min(self.search_threads, len(cleaned))) as pool:
            return list(pool.map(one, cleaned, vectors))
