"""Evaluation: episodes over QA sets, scored with F1-Recall per dataset, with expert usage and cost figures.

Used by ``python -m more_lightning evaluate`` (a table on screen, ``summary.json`` and ``traces.jsonl`` on disk) and by
the module's validation loop during ``fit``. The score is computed from the traces themselves, so the table and the
written traces always agree.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from more_lightning.episodes import EpisodeTrace
from more_lightning.rewards.metric import answer_recall


@dataclass
class DatasetReport:
    """Scores and costs of one dataset."""

    dataset: str
    questions: int
    f1_recall: float
    average_steps: float
    average_retrieval_calls: float
    parse_failures: int
    retries: int
    expert_usage: dict[str, dict[str, int]]
    """``step<i>`` → expert → count of episodes that chose it at that step."""
    skipped: int = 0
    """Rows of the dataset's file that could not be read (bad JSON, missing fields, missing images): not scored."""


SCORE_DENOMINATOR = "the questions read (n); rows that could not be read are counted in 'skipped', not scored"


def summarise(traces: Sequence[EpisodeTrace], skipped: dict[str, int] | None = None) -> list[DatasetReport]:
    """One report per dataset, in first-seen order, plus ``all``; ``skipped``: unreadable rows per dataset."""
    skipped = skipped or {}
    by_dataset: dict[str, list[EpisodeTrace]] = defaultdict(list)
    for name in skipped:
        by_dataset.setdefault(name, [])  # a dataset whose every row was skipped still gets its row
    for trace in traces:
        by_dataset[trace.episode.dataset].append(trace)
    if len(by_dataset) > 1:
        by_dataset["all"] = list(traces)
    skipped = {**skipped, "all": sum(skipped.values())}
    reports = []
    for name, group in by_dataset.items():
        usage: dict[str, Counter] = defaultdict(Counter)
        for trace in group:
            for i, step in enumerate(trace.steps, start=1):
                usage[f"step{i}"][", ".join(step.experts)] += 1
        scores = [answer_recall(t.final_answer, list(t.episode.golds)) for t in group]
        reports.append(
            DatasetReport(
                dataset=name,
                questions=len(group),
                f1_recall=100.0 * sum(scores) / max(len(scores), 1),
                average_steps=sum(len(t.steps) for t in group) / max(len(group), 1),
                average_retrieval_calls=sum(t.retrieval_calls for t in group) / max(len(group), 1),
                parse_failures=sum(t.parse_failures for t in group),
                retries=sum(t.retries for t in group),
                expert_usage={k: dict(v) for k, v in sorted(usage.items())},
                skipped=skipped.get(name, 0),
            )
        )
    return reports


def report_table(reports: Sequence[DatasetReport], title: str = "F1-Recall") -> Table:
    table = Table(title=title, caption=f"F1-Recall is the mean over {SCORE_DENOMINATOR}.")
    columns = (
        "dataset",
        "n",
        "skipped",
        "F1-Recall",
        "avg steps",
        "retrievals",
        "parse fails",
        "experts (step: name×n)",
    )
    for column in columns:
        table.add_column(column, justify="left" if column.startswith(("dataset", "experts")) else "right")
    for r in reports:
        usage = "; ".join(
            f"{step}: " + ", ".join(f"{e or '-'}×{n}" for e, n in experts.items())
            for step, experts in r.expert_usage.items()
        )
        table.add_row(
            r.dataset,
            str(r.questions),
            str(r.skipped),
            f"{r.f1_recall:.2f}",
            f"{r.average_steps:.2f}",
            f"{r.average_retrieval_calls:.2f}",
            str(r.parse_failures),
            usage or "-",
        )
    return table


def write_outputs(
    folder: str | Path, reports: Sequence[DatasetReport], traces: Sequence[EpisodeTrace], settings: dict
) -> Path:
    """``summary.json`` (scores + settings) and ``traces.jsonl`` (one episode per line)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"settings": settings, "score_denominator": SCORE_DENOMINATOR, "datasets": [r.__dict__ for r in reports]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    with (out / "traces.jsonl").open("w") as handle:
        for trace in traces:
            handle.write(json.dumps(trace.to_json(), ensure_ascii=False) + "\n")
    return out
