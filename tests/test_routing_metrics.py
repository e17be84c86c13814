"""Routing accuracy and the routing confusion matrix: computed from hand-made traces, shown in the report table and
written to ``summary.json``."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from more_lightning.agent.episodes import UNPARSED_ROUTE, EpisodeTrace
from more_lightning.agent.eval_reports import (
    DatasetReport,
    confusion_table,
    report_table,
    routing_accuracy,
    summarise,
    write_outputs,
)
from more_lightning.protocol.records import Episode

pytestmark = pytest.mark.unit

TEXT = "text retriever"
TABLE = "table retriever"
ALL_EXPERTS = "table retriever, text retriever"


def trace(number: int, dataset: str, gold_expert: str | None, first_route: str) -> EpisodeTrace:
    """A finished episode whose answer is its gold, with the given gold expert and first route."""
    episode = Episode(
        id=f"q{number}", question=f"question {number}?", golds=("paris",), dataset=dataset, gold_expert=gold_expert
    )
    return EpisodeTrace(episode, routes=[first_route], final_answer="paris")


TRACES = [
    # demo-text: 2 of 4 routed questions correct; q5 names no gold expert and is not counted.
    trace(1, "demo-text", TEXT, TEXT),
    trace(2, "demo-text", TEXT, TEXT),
    trace(3, "demo-text", TEXT, TABLE),
    trace(4, "demo-text", TEXT, UNPARSED_ROUTE),
    trace(5, "demo-text", None, TABLE),
    # demo-table: 1 of 3 correct; choosing every expert or none is wrong.
    trace(6, "demo-table", TABLE, TABLE),
    trace(7, "demo-table", TABLE, ALL_EXPERTS),
    trace(8, "demo-table", TABLE, "none"),
    # demo-plain: no question names a gold expert.
    trace(9, "demo-plain", None, TEXT),
]


@pytest.fixture
def reports() -> dict[str, DatasetReport]:
    return {report.dataset: report for report in summarise(TRACES)}


def test_routing_accuracy_counts_exact_first_routes_only():
    accuracy, routed, confusion = routing_accuracy(TRACES[:5])
    assert accuracy == pytest.approx(50.0)
    assert routed == 4
    assert confusion == {TEXT: {TABLE: 1, TEXT: 2, UNPARSED_ROUTE: 1}}
    assert list(confusion[TEXT]) == [TABLE, TEXT, UNPARSED_ROUTE]


def test_routing_accuracy_without_gold_experts_is_none():
    assert routing_accuracy([TRACES[4], TRACES[8]]) == (None, 0, {})
    assert routing_accuracy([]) == (None, 0, {})


def test_summarise_fills_routing_fields_per_dataset_and_for_all(reports):
    assert list(reports) == ["demo-text", "demo-table", "demo-plain", "all"]
    text, table, plain, everything = (reports[name] for name in reports)
    assert (text.routing_accuracy, text.routed_questions) == (pytest.approx(50.0), 4)
    assert (table.routing_accuracy, table.routed_questions) == (pytest.approx(100 / 3), 3)
    assert table.confusion == {TABLE: {TABLE: 1, ALL_EXPERTS: 1, "none": 1}}
    assert list(table.confusion[TABLE]) == [TABLE, ALL_EXPERTS, "none"]
    assert (plain.routing_accuracy, plain.routed_questions, plain.confusion) == (None, 0, {})
    assert (everything.routing_accuracy, everything.routed_questions) == (pytest.approx(300 / 7), 7)
    assert everything.confusion == {
        TABLE: {TABLE: 1, ALL_EXPERTS: 1, "none": 1},
        TEXT: {TABLE: 1, TEXT: 2, UNPARSED_ROUTE: 1},
    }


def test_report_defaults_keep_old_constructors_working():
    report = DatasetReport("d", 0, 0.0, 0.0, 0.0, 0, 0, {})
    assert (report.routing_accuracy, report.routed_questions, report.confusion) == (None, 0, {})


def rendered(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_report_table_shows_routing_accuracy(reports):
    text = rendered(report_table(list(reports.values())))
    assert "routing acc" in text
    rows = {line.split()[1]: line for line in text.splitlines() if line.strip().startswith("│ demo-")}
    assert "50.0 (n=4)" in rows["demo-text"]
    assert "33.3 (n=3)" in rows["demo-table"]
    assert " - " in rows["demo-plain"]
    assert "42.9 (n=7)" in text


def test_confusion_table_has_gold_rows_and_route_columns(reports):
    text = rendered(confusion_table(reports["all"].confusion, title="demo routing"))
    header = next(line for line in text.splitlines() if "chosen" in line)
    columns = [TABLE, ALL_EXPERTS, TEXT, "none", UNPARSED_ROUTE]
    positions = [header.index(column) for column in columns]
    assert positions == sorted(positions)
    text_row = next(line for line in text.splitlines() if line.strip().startswith(f"│ {TEXT}"))
    assert [cell.strip() for cell in text_row.strip("│ ").split("│")][1:] == ["1", "0", "2", "0", "1"]


def test_summary_json_carries_routing_fields(tmp_path, reports):
    write_outputs(tmp_path, list(reports.values()), TRACES, settings={"router": "policy"})
    datasets = {d["dataset"]: d for d in json.loads((tmp_path / "summary.json").read_text())["datasets"]}
    assert datasets["demo-text"]["routing_accuracy"] == pytest.approx(50.0)
    assert datasets["demo-text"]["routed_questions"] == 4
    assert datasets["demo-text"]["confusion"] == {TEXT: {TABLE: 1, TEXT: 2, UNPARSED_ROUTE: 1}}
    assert datasets["demo-plain"]["routing_accuracy"] is None
    assert datasets["all"]["routed_questions"] == 7
