"""The table expert: tables flattened with ``[Title] … [Header] … [Rows] [Row] …`` markers, embedded as text."""

from __future__ import annotations

from more_lightning.data.jsonl import OnError, ReadResult
from more_lightning.experts.corpus import CorpusRecord, read_tables
from more_lightning.experts.text import SentenceEmbeddingExpert


class TableExpert(SentenceEmbeddingExpert):
    """Tables (JSONL ``{id, title, header, rows, section_title?, caption?}``).

    Args:
        max_rows: rows kept per table in the stored (and embedded) text.
        **kwargs: see :class:`SentenceEmbeddingExpert` and :class:`WeaviateExpert`.
    """

    def __init__(
        self,
        name: str = "table retriever",
        prefix: str = "tar",
        collection: str = "Tables",
        title: str | None = "Table Retriever",
        guideline: str = 'For numerical/statistical queries (e.g., "GDP of Japan in 2020")',
        max_rows: int = 50,
        **kwargs,
    ) -> None:
        super().__init__(name=name, prefix=prefix, collection=collection, title=title, guideline=guideline, **kwargs)
        self.max_rows = max_rows

    def read_corpus(self, on_error: OnError = "skip") -> ReadResult[CorpusRecord]:
        return read_tables(self.corpus, self.max_rows, on_error)
