"""Routing accuracy at each routing step and what an answer costs, computed from hand-made traces: the reports, the
tables and ``summary.json``."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from rich.console import Console

from more_lightning.agent.eval_reports import (
    report_table,
    routing_accuracy,
    routing_by_step,
    summarise,
    systems_table,
    write_outputs,
)
from more_lightning.agent.traces import ENDED_ROUTE, UNPARSED_ROUTE, EpisodeTrace, StepTrace
from more_lightning.protocol.records import Episode, SubStep

TEXT, TABLE, IMAGE = "text retriever", "table retriever", "text image retriever"
ALL_EXPERTS = f"{IMAGE}, {TABLE}, {TEXT}"

pytestmark = pytest.mark.unit


def two_hop(number: int, first: str, second: str) -> Episode:
    teacher = [SubStep(f"hop 1 of {number}?", "a", (first,)), SubStep(f"hop 2 of {number}?", "paris", (second,))]
    return Episode(f"h{number}", f"question {number}?", golds=("paris",), dataset="two-hop", teacher=teacher,
                   gold_expert=first)  # fmt: skip


def trace(
    episode: Episode, routes: list[str], answer: str, retrievals: int, passages: int, tokens: int, seconds: float
) -> EpisodeTrace:
    """A finished episode: one step per route that chose experts, and its costs."""
    steps = [StepTrace("", "sub?", tuple(r.split(", ")), []) for r in routes if r not in ("none", UNPARSED_ROUTE)]
    return EpisodeTrace(
        episode,
        steps=steps,
        routes=routes,
        final_answer=answer,
        retrieval_calls=retrievals,
        passages_read=passages,
        prompt_tokens=tokens,
        seconds=Counter(generation=seconds * 0.75, retrieval=seconds * 0.25),
    )


TRACES = [
    # two-hop: step 1 gold text (3 questions) and table (1); step 2 gold table (3) and text (1).
    trace(two_hop(1, TEXT, TABLE), [TEXT, TABLE, "none"], "paris", 2, 10, 1000, 2.0),  # both right
    trace(two_hop(2, TEXT, TABLE), [TEXT, "none"], "lyon", 1, 5, 600, 1.0),  # stopped after one hop
    trace(two_hop(3, TEXT, TEXT), [TABLE, TEXT], "paris", 2, 10, 900, 2.0),  # step 1 wrong, step 2 right
    trace(two_hop(4, TABLE, TABLE), [UNPARSED_ROUTE], "", 0, 0, 300, 1.0),  # routing ended at once
    # single-hop: step 1 only; every expert is not the gold one.
    trace(
        Episode("s1", "q?", golds=("paris",), dataset="one-hop", gold_expert=IMAGE), [IMAGE], "paris", 1, 5, 400, 1.0
    ),
    trace(
        Episode("s2", "q?", golds=("paris",), dataset="one-hop", gold_expert=TEXT), [ALL_EXPERTS], "x", 3, 15, 800, 3.0
    ),
]


def test_each_steps_gold_expert_comes_from_the_teacher():
    episode = two_hop(1, TEXT, TABLE)
    assert [episode.gold_expert_at(step) for step in range(3)] == [TEXT, TABLE, None]
    single = Episode("s", "q?", gold_expert=IMAGE)
    assert (single.gold_expert_at(0), single.gold_expert_at(1)) == (IMAGE, None)
    assert Episode("n", "q?").gold_expert_at(0) is None


def test_routing_accuracy_at_step_two_counts_an_episode_that_stopped_before_it_as_wrong():
    two = TRACES[:4]
    assert routing_accuracy(two, 0) == (50.0, 4, {TABLE: {UNPARSED_ROUTE: 1}, TEXT: {TABLE: 1, TEXT: 2}})
    accuracy, questions, confusion = routing_accuracy(two, 1)
    assert (accuracy, questions) == (50.0, 4)
    assert confusion == {TABLE: {TABLE: 1, "none": 1, ENDED_ROUTE: 1}, TEXT: {TEXT: 1}}
    assert list(confusion[TABLE]) == [TABLE, "none", ENDED_ROUTE], "experts first, then none, (unparsed), (ended)"
    assert routing_accuracy(TRACES, 2) == (None, 0, {})


def test_routing_by_step_reaches_the_last_step_any_question_names_a_gold_expert_for():
    assert [(s.step, s.accuracy, s.questions) for s in routing_by_step(TRACES)] == [(1, 50.0, 6), (2, 50.0, 4)]
    assert [(s.step, s.questions) for s in routing_by_step(TRACES[4:])] == [(1, 2)]
    assert routing_by_step([trace(Episode("n", "q?"), [TEXT], "", 1, 5, 10, 1.0)]) == []


def test_on_path_accuracy_counts_a_later_step_right_only_when_every_earlier_step_was():
    two = routing_by_step(TRACES[:4])
    assert [(s.step, s.accuracy, s.on_path_accuracy) for s in two] == [(1, 50.0, 50.0), (2, 50.0, 25.0)], (
        "question 3 asks the right expert at step 2 after the wrong one at step 1: right at step 2, off the path"
    )


def test_summarise_reports_routing_per_step_and_costs_per_question():
    reports = {r.dataset: r for r in summarise(TRACES)}
    two, one, everything = reports["two-hop"], reports["one-hop"], reports["all"]
    assert [(s.step, s.accuracy) for s in two.routing_by_step] == [(1, 50.0), (2, 50.0)]
    assert (two.routing_accuracy, two.routed_questions) == (50.0, 4), "step 1 is the report's routing accuracy"
    assert [(s.step, s.accuracy) for s in one.routing_by_step] == [(1, 50.0)]
    assert (two.average_retrieval_calls, two.passages_per_question) == (5 / 4, 25 / 4)
    assert (two.prompt_tokens_per_question, two.seconds_per_question) == (2800 / 4, pytest.approx(6 / 4))
    assert (one.average_retrieval_calls, one.passages_per_question, one.prompt_tokens_per_question) == (2, 10, 600)
    assert everything.average_retrieval_calls == 9 / 6 and everything.seconds_per_question == pytest.approx(10 / 6)


def rows(table) -> dict[str, list[str]]:
    """The table as rendered on a wide console: its header and each row's cells, by first cell."""
    console = Console(record=True, width=250)
    console.print(table)
    lines = [line.strip() for line in console.export_text().splitlines() if line.strip().startswith(("│", "┃"))]
    cells = [[cell.strip() for cell in line.strip("│┃").split(line[0])] for line in lines]
    return {row[0]: row[1:] for row in cells if row[0]}


def test_the_report_table_has_a_column_per_routing_step_and_the_costs():
    table = rows(report_table(summarise(TRACES)))
    header = table["dataset"]
    routing = header.index("routing acc")
    assert header[routing : routing + 2] == ["routing acc", "step 2 routing"]
    costs = header.index("retrievals/q")
    assert header[costs : costs + 4] == ["retrievals/q", "passages/q", "prompt tok/q", "s/q"]
    assert table["two-hop"][routing : routing + 2] == ["50.0 (n=4)", "50.0, path 25.0 (n=4)"]
    assert table["two-hop"][costs : costs + 4] == ["1.25", "6.2", "700", "1.50"]
    assert table["one-hop"][routing : routing + 2] == ["50.0 (n=2)", "-"]


def test_the_systems_table_shows_each_steps_routing_and_the_costs_over_all_questions():
    cheap = [trace(two_hop(1, TEXT, TABLE), [TEXT, TABLE, "none"], "paris", 2, 10, 1000, 2.0)]
    table = rows(systems_table({"trained": summarise(TRACES), "cheap": summarise(cheap)}))
    assert table["system"] == ["two-hop", "one-hop", "all", "retrievals/q", "passages/q", "prompt tok/q", "s/q"]
    trained = ["50.0 (50/50%, path 25%)", "50.0 (50%)", "50.0 (50/50%, path 25%)", "1.50", "7.5", "667", "1.67"]
    assert table["trained"] == trained
    assert table["cheap"] == ["100.0 (100/100%, path 100%)", "-", "-", "2.00", "10.0", "1,000", "2.00"]


def test_summary_json_carries_the_steps_and_the_costs(tmp_path):
    write_outputs(tmp_path, summarise(TRACES), TRACES, settings={})
    datasets = {d["dataset"]: d for d in json.loads((tmp_path / "summary.json").read_text())["datasets"]}
    two = datasets["two-hop"]
    assert [(s["step"], s["accuracy"], s["questions"]) for s in two["routing_by_step"]] == [(1, 50.0, 4), (2, 50.0, 4)]
    assert two["routing_by_step"][1]["confusion"][TABLE] == {TABLE: 1, "none": 1, ENDED_ROUTE: 1}
    assert two["routing_by_step"][1]["on_path_accuracy"] == 25.0
    assert (two["passages_per_question"], two["prompt_tokens_per_question"]) == (6.25, 700.0)
    assert two["seconds_per_question"] == pytest.approx(1.5)
    lines = [json.loads(line) for line in (tmp_path / "traces.jsonl").read_text().splitlines()]
    assert lines[0]["routes"] == [TEXT, TABLE, "none"] and lines[0]["gold_experts"] == [TEXT, TABLE]
    assert (lines[0]["passages_read"], lines[0]["prompt_tokens"]) == (10, 1000)
