"""Evaluation reports: episodes over QA sets scored with F1-Recall and routing accuracy per dataset (at each
routing step where questions name each hop's gold expert), with expert usage and what an answer costs (retrievals,
passages and prompt tokens read, seconds per question).

Used by ``python -m more_lightning evaluate`` (a table on screen, ``summary.json`` and ``traces.jsonl`` on disk) and by
the module's validation loop during ``fit``. The score is computed from the traces themselves, so the table and the
written traces always agree.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.table import Table

from more_lightning.agent.traces import ENDED_ROUTE, UNPARSED_ROUTE, EpisodeTrace
from more_lightning.protocol.experts import NONE_EXPERT
from more_lightning.rewards.metric import answer_recall


@dataclass
class StepRouting:
    """Routing accuracy at one routing step: the step's route against the step's gold expert."""

    step: int
    """The routing step, from 1."""
    accuracy: float | None
    """Percent (0–100) of the questions naming this step's gold expert whose route at this step is exactly it."""
    questions: int
    """Questions naming this step's gold expert: the denominator of ``accuracy``."""
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    """Gold expert → route at this step (an expert, a comma-joined list, ``none``, ``(unparsed)`` or ``(ended)``)
    → count of questions."""
    on_path_accuracy: float | None = None
    """Percent of ``questions`` routed to the gold expert at this step *and* at every earlier step: the gold path
    so far (equals ``accuracy`` at step 1). ``accuracy`` alone can flatter a later step: a question whose first step
    asked the wrong expert may still ask the right one next."""


@dataclass
class DatasetReport:
    """Scores and costs of one dataset."""

    dataset: str
    questions: int
    f1_recall: float
    average_steps: float
    average_retrieval_calls: float
    """Searches per question: one per expert per routing step."""
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
    routing_by_step: list[StepRouting] = field(default_factory=list)
    """Routing at each step that some question names a gold expert for (step 1 repeats the three fields above)."""
    passages_per_question: float = 0.0
    """Passages placed in the sub-answer prompts, per question."""
    prompt_tokens_per_question: float = 0.0
    """Tokens of every prompt the policy read in the episode, per question."""
    seconds_per_question: float = 0.0
    """Generation, retrieval and scoring seconds per question (a batch's time split evenly among its questions)."""


SCORE_DENOMINATOR = "the questions read (n); rows that could not be read are counted in 'skipped', not scored"
ROUTES_LAST = (NONE_EXPERT, UNPARSED_ROUTE, ENDED_ROUTE)
"""First routes listed after the experts in confusion tables and figures, in this order."""


def route_order(routes: Sequence[str]) -> list[str]:
    """The distinct ``routes`` sorted by name, with ``none``, ``(unparsed)`` and ``(ended)`` last."""
    distinct = set(routes)
    return sorted(distinct - set(ROUTES_LAST)) + [route for route in ROUTES_LAST if route in distinct]


def routing_accuracy(
    traces: Sequence[EpisodeTrace], step: int = 0
) -> tuple[float | None, int, dict[str, dict[str, int]]]:
    """Routing accuracy (percent) at routing step ``step`` (0-based), the questions it counts, and the confusion
    matrix gold expert → route → count.

    Only traces whose episode names a gold expert for the step count (``Episode.gold_expert_at``). A route is correct
    only when it is exactly the gold expert: a route choosing several experts (the ``all`` baseline, every expert)
    is not correct, nor are ``none``, ``(unparsed)`` and ``(ended)`` (the episode stopped before this step). The
    accuracy is ``None`` when no trace names a gold expert for the step.
    """
    confusion: dict[str, Counter] = defaultdict(Counter)
    for trace in traces:
        if gold := trace.episode.gold_expert_at(step):
            confusion[gold][trace.route_at(step)] += 1
    routed = sum(sum(routes.values()) for routes in confusion.values())
    correct = sum(routes[gold] for gold, routes in confusion.items())
    accuracy = 100.0 * correct / routed if routed else None
    matrix = {
        gold: {route: confusion[gold][route] for route in route_order(confusion[gold])} for gold in sorted(confusion)
    }
    return accuracy, routed, matrix


def routed_right(trace: EpisodeTrace, step: int) -> bool:
    """Whether the route at routing step ``step`` (0-based) is exactly the step's gold expert."""
    gold = trace.episode.gold_expert_at(step)
    return gold is not None and trace.route_at(step) == gold


def on_path_accuracy(traces: Sequence[EpisodeTrace], step: int) -> float | None:
    """Percent of the traces naming a gold expert at ``step`` (0-based) routed right at it and at every earlier
    step; ``None`` when no trace names one."""
    counted = [trace for trace in traces if trace.episode.gold_expert_at(step)]
    right = sum(all(routed_right(trace, earlier) for earlier in range(step + 1)) for trace in counted)
    return 100.0 * right / len(counted) if counted else None


def routing_by_step(traces: Sequence[EpisodeTrace]) -> list[StepRouting]:
    """Routing at each step from 1 to the last that some trace names a gold expert for (none when no trace does)."""
    hops = 0
    while any(trace.episode.gold_expert_at(hops) for trace in traces):
        hops += 1
    return [
        StepRouting(step + 1, *routing_accuracy(traces, step), on_path_accuracy(traces, step)) for step in range(hops)
    ]


def per_question(traces: Sequence[EpisodeTrace], value) -> float:
    """The mean of ``value(trace)`` over ``traces`` (0 for none)."""
    return sum(value(trace) for trace in traces) / max(len(traces), 1)


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
        accuracy, routed, confusion = routing_accuracy(group)
        reports.append(
            DatasetReport(
                dataset=name,
                questions=len(group),
                f1_recall=100.0 * per_question(group, lambda t: answer_recall(t.final_answer, list(t.episode.golds))),
                average_steps=per_question(group, lambda t: len(t.steps)),
                average_retrieval_calls=per_question(group, lambda t: t.retrieval_calls),
                parse_failures=sum(t.parse_failures for t in group),
                retries=sum(t.retries for t in group),
                expert_usage={k: dict(v) for k, v in sorted(usage.items())},
                skipped=skipped.get(name, 0),
                routing_accuracy=accuracy,
                routed_questions=routed,
                confusion=confusion,
                routing_by_step=routing_by_step(group),
                passages_per_question=per_question(group, lambda t: t.passages_read),
                prompt_tokens_per_question=per_question(group, lambda t: t.prompt_tokens),
                seconds_per_question=per_question(group, lambda t: t.total_seconds),
            )
        )
    return reports


COST_COLUMNS = ("retrievals/q", "passages/q", "prompt tok/q", "s/q")
"""What an answer costs, per question: searches run, passages read, prompt tokens read, seconds."""


def cost_cells(report: DatasetReport) -> list[str]:
    """The report's ``COST_COLUMNS`` as table cells."""
    return [
        f"{report.average_retrieval_calls:.2f}",
        f"{report.passages_per_question:.1f}",
        f"{report.prompt_tokens_per_question:,.0f}",
        f"{report.seconds_per_question:.2f}",
    ]


def overall(reports: Sequence[DatasetReport]) -> DatasetReport:
    """The ``all`` row (or the single dataset's)."""
    return next((r for r in reports if r.dataset == "all"), reports[-1])


def _step_accuracy(report: DatasetReport, step: int) -> str:
    """Routing accuracy at routing ``step`` (from 1) with its question count, ``-`` where no question names it."""
    found = next((s for s in report.routing_by_step if s.step == step), None)
    if found is None or found.accuracy is None:
        return "-"
    path = f", path {found.on_path_accuracy:.1f}" if step > 1 and found.on_path_accuracy is not None else ""
    return f"{found.accuracy:.1f}{path} (n={found.questions})"


def report_table(reports: Sequence[DatasetReport], title: str = "F1-Recall") -> Table:
    """The reports as a table: one row per dataset, with scores, routing accuracy at each step, costs and expert
    usage."""
    table = Table(
        title=title,
        caption=f"F1-Recall is the mean over {SCORE_DENOMINATOR}. Routing accuracy at step k: the route of routing "
        "step k is that step's gold expert, over the questions naming one (n); path: right at every step up to k. "
        "Costs are per question (/q).",
    )
    steps = max((len(r.routing_by_step) for r in reports), default=0)
    routing = ["routing acc", *(f"step {k} routing" for k in range(2, steps + 1))]
    columns = ("dataset", "n", "skipped", "F1-Recall", *routing, "avg steps", *COST_COLUMNS, "parse fails")
    for column in (*columns, "experts (step: name×n)"):
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
            *(_step_accuracy(r, step) for step in range(1, max(steps, 1) + 1)),
            f"{r.average_steps:.2f}",
            *cost_cells(r),
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
    summary = {"settings": settings, "score_denominator": SCORE_DENOMINATOR, "datasets": [asdict(r) for r in reports]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    with (out / TRACES).open("w") as handle:
        handle.writelines(trace_line(trace) for trace in traces)
    return out


def trace_line(trace: EpisodeTrace) -> str:
    """One episode as a ``traces.jsonl`` line."""
    return json.dumps(trace.to_json(), ensure_ascii=False) + "\n"


def _routing_cell(report: DatasetReport) -> str:
    """`` (s1/s2%, path p%)``: routing accuracy at each step, and on the gold path up to the last (several steps)."""
    steps = [s for s in report.routing_by_step if s.accuracy is not None]
    if not steps:
        return ""
    accuracies = "/".join(f"{s.accuracy:.0f}" for s in steps)
    last = steps[-1].on_path_accuracy
    path = f", path {last:.0f}%" if len(steps) > 1 and last is not None else ""
    return f" ({accuracies}%{path})"


def systems_table(results: dict[str, Sequence[DatasetReport]], title: str = "Systems on the same questions") -> Table:
    """One row per system (router or policy): F1-Recall and routing accuracy per dataset, then what an answer costs
    over all questions."""
    table = Table(
        title=title,
        caption="F1-Recall (routing accuracy %, at each routing step vs. its gold expert; path: right at every step); "
        "costs per question (/q) over all questions",
    )
    table.add_column("system")
    datasets = list(dict.fromkeys(r.dataset for reports in results.values() for r in reports))
    for name in (*datasets, *COST_COLUMNS):
        table.add_column(name, justify="right")
    for system, reports in results.items():
        by_name = {r.dataset: r for r in reports}
        cells = []
        for name in datasets:
            report = by_name.get(name)
            if report is None:
                cells.append("-")
                continue
            cells.append(f"{report.f1_recall:.1f}{_routing_cell(report)}")
        table.add_row(system, *cells, *cost_cells(overall(reports)))
    return table
