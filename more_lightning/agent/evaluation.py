"""Evaluation: episodes over QA sets, scored with F1-Recall and routing accuracy per dataset, with expert usage and
cost figures.

Used by ``python -m more_lightning evaluate`` (a table on screen, ``summary.json`` and ``traces.jsonl`` on disk) and by
the module's validation loop during ``fit``. The score is computed from the traces themselves, so the table and the
written traces always agree.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from more_lightning.agent.episodes import UNPARSED_ROUTE, EpisodeTrace
from more_lightning.protocol.experts import NONE_EXPERT
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
    routing_accuracy: float | None = None
    """Percent (0–100) of the questions naming a gold expert whose first route is exactly that expert; ``None`` when
    no question of the dataset names one."""
    routed_questions: int = 0
    """Questions naming a gold expert: the denominator of ``routing_accuracy``."""
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    """Gold expert → first route (an expert, a comma-joined list, ``none`` or ``(unparsed)``) → count of questions."""


SCORE_DENOMINATOR = "the questions read (n); rows that could not be read are counted in 'skipped', not scored"
ROUTES_LAST = (NONE_EXPERT, UNPARSED_ROUTE)
"""First routes listed after the experts in confusion tables and figures, in this order."""


def route_order(routes: Sequence[str]) -> list[str]:
    """The distinct ``routes`` sorted by name, with ``none`` and ``(unparsed)`` last."""
    distinct = set(routes)
    return sorted(distinct - set(ROUTES_LAST)) + [route for route in ROUTES_LAST if route in distinct]


def routing_accuracy(traces: Sequence[EpisodeTrace]) -> tuple[float | None, int, dict[str, dict[str, int]]]:
    """Routing accuracy (percent), the questions it counts, and the confusion matrix gold expert → first route → count.

    Only traces whose episode names a gold expert count. A first route is correct only when it is exactly the gold
    expert: a route choosing several experts (the ``all`` baseline, every expert) is not correct, nor are ``none``
    and ``(unparsed)``. The accuracy is ``None`` when no trace names a gold expert.
    """
    confusion: dict[str, Counter] = defaultdict(Counter)
    for trace in traces:
        if trace.episode.gold_expert:
            confusion[trace.episode.gold_expert][trace.first_route] += 1
    routed = sum(sum(routes.values()) for routes in confusion.values())
    correct = sum(routes[gold] for gold, routes in confusion.items())
    accuracy = 100.0 * correct / routed if routed else None
    matrix = {
        gold: {route: confusion[gold][route] for route in route_order(confusion[gold])} for gold in sorted(confusion)
    }
    return accuracy, routed, matrix


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
        accuracy, routed, confusion = routing_accuracy(group)
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
                routing_accuracy=accuracy,
                routed_questions=routed,
                confusion=confusion,
            )
        )
    return reports


def report_table(reports: Sequence[DatasetReport], title: str = "F1-Recall") -> Table:
    """The reports as a table: one row per dataset, with scores, routing accuracy, costs and expert usage."""
    table = Table(
        title=title,
        caption=f"F1-Recall is the mean over {SCORE_DENOMINATOR}. Routing accuracy: the first route is the gold "
        "expert, over the questions naming one (n).",
    )
    columns = (
        "dataset",
        "n",
        "skipped",
        "F1-Recall",
        "routing acc",
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
            "-" if r.routing_accuracy is None else f"{r.routing_accuracy:.1f} (n={r.routed_questions})",
            f"{r.average_steps:.2f}",
            f"{r.average_retrieval_calls:.2f}",
            str(r.parse_failures),
            usage or "-",
        )
    return table


def confusion_table(confusion: dict[str, dict[str, int]], title: str = "Routing: gold expert × first route") -> Table:
    """A confusion matrix as a table: one row per gold expert, one column per first route, counts in the cells."""
    routes = route_order([route for row in confusion.values() for route in row])
    table = Table(title=title)
    table.add_column("gold \\ chosen", justify="left")
    for route in routes:
        table.add_column(route, justify="right")
    for gold, row in confusion.items():
        table.add_row(gold, *(str(row.get(route, 0)) for route in routes))
    return table


TRACES = "traces.jsonl"
"""The file of every episode, one per line (written as episodes finish, then once more with the summary)."""


def write_outputs(
    folder: str | Path, reports: Sequence[DatasetReport], traces: Sequence[EpisodeTrace], settings: dict
) -> Path:
    """``summary.json`` (scores + settings) and ``traces.jsonl`` (one episode per line)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"settings": settings, "score_denominator": SCORE_DENOMINATOR, "datasets": [r.__dict__ for r in reports]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    with (out / TRACES).open("w") as handle:
        handle.writelines(trace_line(trace) for trace in traces)
    return out


def trace_line(trace: EpisodeTrace) -> str:
    """One episode as a ``traces.jsonl`` line."""
    return json.dumps(trace.to_json(), ensure_ascii=False) + "\n"


def systems_table(results: dict[str, Sequence[DatasetReport]], title: str = "Systems on the same questions") -> Table:
    """One row per system (router or policy): F1-Recall and routing accuracy per dataset, ``all`` last."""
    table = Table(title=title, caption="F1-Recall (routing accuracy %, first routing step vs. the gold expert)")
    table.add_column("system")
    datasets = list(dict.fromkeys(r.dataset for reports in results.values() for r in reports))
    for name in datasets:
        table.add_column(name, justify="right")
    for system, reports in results.items():
        by_name = {r.dataset: r for r in reports}
        cells = []
        for name in datasets:
            report = by_name.get(name)
            if report is None:
                cells.append("-")
                continue
            routing = f" ({report.routing_accuracy:.0f}%)" if report.routing_accuracy is not None else ""
            cells.append(f"{report.f1_recall:.1f}{routing}")
        table.add_row(system, *cells)
    return table
