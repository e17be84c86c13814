"""Corpus files the experts index, read into :class:`CorpusRecord` with bad rows reported by file and line.

- passages (JSONL): ``{"id", "text", "title"?, "vector"?, <metadata>...}``
- tables (JSONL): ``{"id", "title", "header": [...], "rows": [[...]], "section_title"?, "caption"?}``
- images: a JSONL of ``{"id", "file", "caption"}`` with ``file`` relative to an image folder

``vector`` (optional) is a precomputed embedding; it skips the embedder for that row.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from more_lightning.errors import SettingError
from more_lightning.protocol.images import image_problem
from more_lightning.protocol.jsonl import OnError, ReadResult, RowError, read_jsonl_rows, require


@dataclass(frozen=True)
class CorpusRecord:
    """One object to index."""

    source_id: str
    text: str
    """What the policy reads (and what BM25 searches)."""
    properties: dict[str, Any] = field(default_factory=dict)
    """Extra stored properties (title, metadata, image file, ...)."""
    image: str | None = None
    """An image file to embed (text-image expert)."""
    vector: tuple[float, ...] | None = None
    """A precomputed embedding, if the row has one."""
    source: str = ""
    """``file:line`` for error messages."""


def _vector(row: dict) -> tuple[float, ...] | None:
    if "vector" not in row:
        return None
    value = row["vector"]
    if not isinstance(value, list) or not value or not all(isinstance(v, (int, float)) for v in value):
        raise RowError("vector", "expected a non-empty list of numbers")
    return tuple(float(v) for v in value)


def _source_id(row: dict) -> str:
    value = require(row, "id", (str, int))
    return str(value)


def read_passages(
    path: str | os.PathLike, metadata_fields: Sequence[str] = (), on_error: OnError = "skip"
) -> ReadResult[CorpusRecord]:
    """Text passages. The policy reads ``"{title} {text}"`` when there is a title."""

    def parse(row: dict, line: int) -> CorpusRecord:
        text = require(row, "text", str)
        if not text.strip():
            raise RowError("text", "empty")
        title = row.get("title") or ""
        if not isinstance(title, str):
            raise RowError("title", "expected a string")
        metadata = {name: str(row[name]) for name in metadata_fields if name in row}
        return CorpusRecord(
            _source_id(row),
            f"{title} {text}".strip(),
            {"title": title, **metadata},
            vector=_vector(row),
            source=f"{path}:{line}",
        )

    return read_jsonl_rows(path, parse, on_error)


def flatten_table(
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    section_title: str = "",
    caption: str = "",
) -> str:
    """The official table text: ``[Title] … [Section title] … [Caption] … [Header] a | b [Rows] [Row] 1 | 2 …``."""
    body = " ".join("[Row] " + " | ".join(str(cell) for cell in row) for row in rows)
    return (
        f"[Title] {title} [Section title] {section_title} [Caption] {caption} "
        f"[Header] {' | '.join(str(h) for h in header)} [Rows] {body}"
    )


def check_rows_per_passage(rows_per_passage: int | None) -> None:
    """Raise ``ValueError`` unless ``rows_per_passage`` is ``None`` (whole tables) or at least 1."""
    if rows_per_passage is not None and rows_per_passage < 1:
        raise SettingError(f"rows_per_passage must be at least 1 (or null for whole tables), not {rows_per_passage}")


def table_passages(
    table_id: str,
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    section_title: str = "",
    caption: str = "",
    max_rows: int | None = None,
    rows_per_passage: int | None = None,
) -> list[tuple[str, str]]:
    """``(id, text)`` of the passages one table is stored as, each flattened with :func:`flatten_table`.

    With ``rows_per_passage=None`` (the official layout) the table is one passage with its own id. Otherwise it is
    split into passages of that many rows, each repeating the title, captions and header, with ids
    ``"{table_id}#rows-{first}-{last}"`` (1-based): a search then finds the row a question names, and a passage cut
    to a few hundred characters still holds it.
    """
    check_rows_per_passage(rows_per_passage)
    kept = list(rows if max_rows is None else rows[:max_rows])
    if rows_per_passage is None:
        return [(table_id, flatten_table(title, header, kept, section_title, caption))]
    passages = []
    for start in range(0, len(kept), rows_per_passage):
        part = kept[start : start + rows_per_passage]
        passage_id = f"{table_id}#rows-{start + 1}-{start + len(part)}"
        passages.append((passage_id, flatten_table(title, header, part, section_title, caption)))
    return passages


def read_tables(
    path: str | os.PathLike,
    max_rows: int | None = 50,
    on_error: OnError = "skip",
    rows_per_passage: int | None = None,
) -> ReadResult[CorpusRecord]:
    """Tables, as the passages of :func:`table_passages` (the report counts tables: ``rows_read``)."""

    def parse(row: dict, line: int) -> list[CorpusRecord]:
        title = require(row, "title", str)
        header = require(row, "header", list)
        rows = require(row, "rows", list)
        if not rows or not all(isinstance(r, list) for r in rows):
            raise RowError("rows", "expected a non-empty list of rows (lists of cells)")
        for i, cells in enumerate(rows):
            if len(cells) != len(header):
                raise RowError(f"rows[{i}]", f"{len(cells)} cells but the header has {len(header)} columns")
        vector = _vector(row)
        if vector is not None and rows_per_passage is not None:
            raise RowError(
                "vector", "a precomputed vector embeds a whole table; it cannot be split by rows_per_passage"
            )
        section, caption = str(row.get("section_title") or ""), str(row.get("caption") or "")
        passages = table_passages(_source_id(row), title, header, rows, section, caption, max_rows, rows_per_passage)
        return [
            CorpusRecord(passage_id, text, {"title": title}, vector=vector, source=f"{path}:{line}")
            for passage_id, text in passages
        ]

    tables = read_jsonl_rows(path, parse, on_error)
    return ReadResult([record for records in tables for record in records], tables.report)


def read_image_captions(
    path: str | os.PathLike, image_folder: str | os.PathLike | None = None, on_error: OnError = "skip"
) -> ReadResult[CorpusRecord]:
    """Images with captions; ``file`` is relative to ``image_folder`` (default: the JSONL's folder)."""
    folder = Path(image_folder) if image_folder else Path(path).parent

    def parse(row: dict, line: int) -> CorpusRecord:
        caption = require(row, "caption", str)
        if not caption.strip():
            raise RowError("caption", "empty")
        image = folder / require(row, "file", str)
        if problem := image_problem(image):  # decoded once here, so a bad image is a skipped row, not a failure
            raise RowError("file", f"image {image}: {problem}")
        return CorpusRecord(
            _source_id(row),
            caption,
            {"file": image.name},
            image=str(image),
            vector=_vector(row),
            source=f"{path}:{line}",
        )

    return read_jsonl_rows(path, parse, on_error)
