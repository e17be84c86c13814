"""The table expert: tables flattened with ``[Title] … [Header] … [Rows] [Row] …`` markers, embedded as text."""

from __future__ import annotations

from more_lightning.experts.corpus import CorpusRecord, check_rows_per_passage, read_tables
from more_lightning.experts.text import SentenceEmbeddingExpert
from more_lightning.protocol.jsonl import OnError, ReadResult


class TableExpert(SentenceEmbeddingExpert):
    """Tables (JSONL ``{id, title, header, rows, section_title?, caption?}``).

    Args:
        max_rows: rows kept per table in the stored (and embedded) text.
        rows_per_passage: store each table as passages of this many rows, each with the table's title, captions
            and header (ids ``"{id}#rows-{first}-{last}"``), so that a search finds the row a question names and a
            cut passage still holds it; ``None`` (the official layout): one passage per table.
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
        rows_per_passage: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(name=name, prefix=prefix, collection=collection, title=title, guideline=guideline, **kwargs)
        check_rows_per_passage(rows_per_passage)  # a bad config fails when it is built, not when indexing starts
        self.max_rows = max_rows
        self.rows_per_passage = rows_per_passage

    def read_corpus(self, on_error: OnError = "skip") -> ReadResult[CorpusRecord]:
        return read_tables(self.corpus, self.max_rows, on_error, self.rows_per_passage)
