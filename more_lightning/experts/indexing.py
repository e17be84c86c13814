"""Indexing corpora into the experts' collections: batched embedding and import, resumable, with a progress bar.

Per batch: the deterministic UUIDs of its rows are looked up first and rows already stored are skipped before
embedding, so re-running imports nothing twice and an interrupted run resumes where it stopped. Rows that cannot be
read, embedded or imported are reported with their ``file:line``; ``on_error`` says whether the run goes on, and a
run that leaves rows out ends with an error (exit 2), not 0.

A server killed during an import (or a full disk) can keep objects whose vectors never reached the vector index (they
exist, but vector search never returns them), or that the id filter no longer finds. So the collection is marked
incomplete while a run imports and complete only when every row is in; a run into an incomplete collection trusts no
stored row until the id filter and vector search (with its own vector) both find it, and deletes and re-imports the
rest (``repaired``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from more_lightning.errors import UserError
from more_lightning.experts.connection import WeaviateConfig, open_weaviate
from more_lightning.experts.corpus import CorpusRecord
from more_lightning.experts.weaviate_expert import WeaviateExpert
from more_lightning.progress import progress_bar as terminal_or_line_progress
from more_lightning.protocol.jsonl import OnError


class IndexingFailed(UserError, RuntimeError):
    """Rows could not be indexed (the first one, with ``on_error: raise``), or the server stopped answering."""


@dataclass
class IndexReport:
    """What one expert's indexing run did."""

    expert: str
    collection: str
    rows: int = 0
    imported: int = 0
    already_present: int = 0
    failures: list[str] = field(default_factory=list)
    """``file:line: message`` for every row that was not imported (bad rows, duplicate ids, embedding and import
    errors)."""
    skipped: int = 0
    """Rows not imported because they could not be read or repeat an earlier row's id (the rest of ``failures``
    failed to embed or import): ``rows = imported + already_present + skipped + failed``."""
    seconds: float = 0.0
    total_in_collection: int = 0
    repaired: int = 0
    """Stored rows that vector search or the id filter did not find (left by an interrupted run): deleted and imported
    again (counted in ``imported``)."""

    @property
    def failed(self) -> int:
        """Rows that failed to embed or import."""
        return len(self.failures) - self.skipped


class RowsPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:,.0f} rows/s" if task.speed else "- rows/s")


def progress_bar() -> Progress:
    """Indexing progress: rows done, rows per second and time left (plain lines when stdout is not a terminal)."""
    return terminal_or_line_progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RowsPerSecond(), TimeRemainingColumn()
    )


def _embed(
    expert: WeaviateExpert, records: Sequence[CorpusRecord]
) -> tuple[list[int], list[np.ndarray], dict[int, str]]:
    """Vectors for ``records``: precomputed ones as given, the rest from the expert's embedder."""
    to_embed = [i for i, r in enumerate(records) if r.vector is None]
    vectors: dict[int, np.ndarray] = {
        i: np.asarray(r.vector, np.float32) for i, r in enumerate(records) if r.vector is not None
    }
    errors: dict[int, str] = {}
    if to_embed:
        embedded, embed_errors = expert.embed_records([records[i] for i in to_embed])
        errors = {to_embed[j]: message for j, message in embed_errors.items()}
        worked = [i for j, i in enumerate(to_embed) if j not in embed_errors]
        vectors.update(zip(worked, embedded, strict=True))
    order = sorted(vectors)
    return order, [vectors[i] for i in order], errors


def index_expert(
    expert: WeaviateExpert,
    batch_size: int = 64,
    on_error: OnError = "skip",
    recreate: bool = False,
    progress: Progress | None = None,
) -> IndexReport:
    """Read ``expert.corpus`` and import every row not yet in its collection."""
    started = time.monotonic()
    report = IndexReport(expert.name, expert.collection_name)
    read = expert.read_corpus(on_error)
    report.rows = len(read) + read.report.rows_skipped
    report.failures += [str(bad) for bad in read.report.bad_rows]
    report.skipped = read.report.rows_skipped

    def fail(record: CorpusRecord, message: str) -> None:
        line = f"{record.source}: {message}"
        if on_error == "raise":
            raise IndexingFailed(f"{line} (set on_error='skip' to go on past such rows)")
        report.failures.append(line)

    first_seen: dict[str, str] = {}
    records = []
    for record in read:  # a repeated id would overwrite the earlier object (one uuid per id): keep the first
        if record.source_id in first_seen:
            fail(record, f"duplicate id {record.source_id!r} (first at {first_seen[record.source_id]}); not indexed")
            report.skipped += 1
        else:
            first_seen[record.source_id] = record.source
            records.append(record)
    expert.ensure_collection(recreate)
    verify = not expert.is_complete()
    expert.mark_complete(False)
    task = (
        progress.add_task(f"{expert.name} → {expert.collection_name}", total=len(records), unit="rows")
        if progress
        else None
    )

    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        uuids = [expert.uuid_for(r.source_id) for r in batch]
        present = expert.existing_uuids(uuids)
        if verify and (broken := expert.untrusted(uuids, present)):
            expert.delete(sorted(broken))
            present -= broken
            report.repaired += len(broken)
        todo = [r for r, uuid in zip(batch, uuids, strict=True) if uuid not in present]
        report.already_present += len(batch) - len(todo)
        order, vectors, embed_errors = _embed(expert, todo)
        for i, message in embed_errors.items():
            fail(todo[i], message)
        embedded = [todo[i] for i in order]
        insert_errors = expert.insert(embedded, vectors)
        for i, message in insert_errors.items():
            fail(embedded[i], message)
        report.imported += len(embedded) - len(insert_errors)
        if progress is not None:
            progress.advance(task, len(batch))
    report.seconds = time.monotonic() - started
    report.total_in_collection = expert.count()
    if not report.failed:
        expert.mark_complete(True)
    return report


def report_table(reports: Sequence[IndexReport]) -> Table:
    """A summary table of indexing runs."""
    table = Table(
        title="Indexing (rows = new + kept + skipped + failed; kept: already there; skipped: bad rows, duplicate ids)"
    )
    for column in ("expert", "collection", "rows", "new", "kept", "skipped", "failed", "total", "s", "rows/s"):
        table.add_column(column, justify="left" if column in ("expert", "collection") else "right")
    for r in reports:
        rate = r.imported / r.seconds if r.seconds > 0 else 0.0
        table.add_row(
            r.expert,
            r.collection,
            str(r.rows),
            str(r.imported),
            str(r.already_present),
            str(r.skipped),
            str(r.failed),
            str(r.total_in_collection),
            f"{r.seconds:.1f}",
            f"{rate:,.0f}",
        )
    return table


def index(
    experts: list[WeaviateExpert],
    weaviate: WeaviateConfig = WeaviateConfig(),
    batch_size: int = 64,
    on_error: OnError = "skip",
    recreate: bool = False,
) -> int:
    """Embed the experts' corpora and import them into their Weaviate collections (resumable, no duplicates).

    Args:
        experts: the experts to index (``class_path``/``init_args``), each with its ``corpus``.
        weaviate: how to reach Weaviate (default: the embedded server).
        batch_size: rows embedded and imported together.
        on_error: ``skip`` bad rows (reported at the end) or ``raise`` at the first one.
        recreate: drop each collection first and index from scratch.
    """

    from weaviate.exceptions import WeaviateBaseError

    with open_weaviate(weaviate) as client:
        reports = []
        with progress_bar() as progress:
            for expert in experts:
                expert.bind(client, weaviate.describe())
                try:
                    reports.append(index_expert(expert, batch_size, on_error, recreate, progress))
                except WeaviateBaseError as error:
                    raise IndexingFailed(
                        f"Weaviate at {weaviate.describe()} stopped answering while indexing {expert.name!r} "
                        f"({type(error).__name__}). The rows imported so far are kept: restart the server and run "
                        "`index` again (it checks the stored vectors and imports the rest)."
                    ) from None
        console = Console()
        console.print(report_table(reports))
        for report in reports:
            for failure in report.failures:
                console.print(f"[yellow]not indexed[/] {failure}")
            if report.repaired:
                console.print(f"re-imported {report.repaired} rows of {report.expert} that vector search missed")
    if failed := sum(r.failed for r in reports):
        raise IndexingFailed(
            f"{failed} rows failed to embed or import (listed above as 'not indexed'); the collections keep the "
            "rest and are marked incomplete. Fix the cause (disk space, server log) and run `index` again."
        )
    return 0
