"""The table expert: tables flattened with ``[Title] … [Header] … [Rows] [Row] …`` markers, embedded as text."""

from __future__ import annotations

from more_lightning.data.jsonl import OnError, ReadResult
from more_lightning.experts.corpus import CorpusRecord, read_tables
from more_lightning.experts.embedders import MINILM
from more_lightning.experts.text import SentenceEmbeddingExpert
from more_lightning.experts.weaviate_expert import SearchMode


class TableExpert(SentenceEmbeddingExpert):
    """Tables (JSONL ``{id, title, header, rows, section_title?, caption?}``).

    Args:
        max_rows: rows kept per table in the stored (and embedded) text.
    """

    def __init__(
        self,
        name: str = "table retriever",
        prefix: str = "tar",
        collection: str = "Tables",
        corpus: str | None = None,
        embedder: str = MINILM,
        search_mode: SearchMode = "vector",
        alpha: float = 0.5,
        filters: dict[str, str] | None = None,
        max_rows: int = 50,
        retries: int = 3,
        retry_delay: float = 0.5,
        title: str | None = "Table Retriever",
        guideline: str = 'For numerical/statistical queries (e.g., "GDP of Japan in 2020")',
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
        self.max_rows = max_rows

    def read_corpus(self, on_error: OnError = "skip") -> ReadResult[CorpusRecord]:
        return read_tables(self.corpus, self.max_rows, on_error)
