"""The demo's targets, measured from hand-made reports: met, missed, and "not measured" where a dataset or baseline was
not run (CI's slice has neither the two-expert nor the held-out phrasing questions); ``report.json`` and the figures."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from more_lightning.agent.eval_reports import DatasetReport, StepRouting
from more_lightning.demo.report import HELDOUT, TWO_HOP, targets, targets_table, write_demo_figures, write_report

TEXT, TABLE = "text retriever", "table retriever"

pytestmark = pytest.mark.unit


def report(
    dataset: str,
    f1: float,
    routing: list[float] | None = None,
    retrievals: float = 1.0,
    questions: int = 10,
    path: float | None = None,
) -> DatasetReport:
    """A dataset's report: F1-Recall, routing accuracy at each step (``path``: the last step's on the gold path, else
    its accuracy), retrievals per question."""
    routing = routing or []
    steps = [
        StepRouting(step, accuracy, questions, {TEXT: {TEXT: questions}}, accuracy)
        for step, accuracy in enumerate(routing, start=1)
    ]
    if path is not None:
        steps[-1].on_path_accuracy = path
    return DatasetReport(
        dataset,
        questions,
        f1,
        1.0,
        retrievals,
        0,
        0,
        {},
        routing_accuracy=steps[0].accuracy if steps else None,
        routed_questions=questions if steps else 0,
        confusion=steps[0].confusion if steps else {},
        routing_by_step=steps,
        passages_per_question=5 * retrievals,
        prompt_tokens_per_question=900.0,
        seconds_per_question=2.5,
    )


def systems(trained_two_hop: float = 40.0) -> dict[str, list[DatasetReport]]:
    """The demo's systems on a single-hop set, the two-expert set and the held-out phrasings, and ``all``."""
    return {
        f"fixed:{TEXT}": [report("demo-text", 30, [50]), report(TWO_HOP, 25, [50, 50]), report("all", 20, [50])],
        f"fixed:{TABLE}": [report("demo-text", 10, [0]), report(TWO_HOP, 28, [50, 50]), report("all", 22, [40])],
        "all": [report("demo-text", 40), report(TWO_HOP, 42, retrievals=6), report("all", 30, retrievals=6)],
        "trained": [
            report("demo-text", 35, [90]),
            report(TWO_HOP, trained_two_hop, [85, 90], retrievals=2, path=70),
            report(HELDOUT, 20, [72]),
            report("all", 28, [81, 70], retrievals=2),
        ],
    }


STEP_2 = f"trained routing accuracy, {TWO_HOP} step 2, right at step 1 too (%)"


def by_name(found) -> dict:
    return {target.name: target for target in found}


def test_every_target_is_measured_against_its_baseline():
    found = by_name(targets(systems(), {"total": 1380.0}))
    overall = found[f"trained F1-Recall ≥ best fixed (fixed:{TABLE}) + 5, all questions"]
    assert (overall.goal, overall.measured, overall.met) == (27.0, 28.0, True)
    two_hop = found[f"trained F1-Recall ≥ best fixed (fixed:{TABLE}) + 10, {TWO_HOP}"]
    assert (two_hop.goal, two_hop.measured, two_hop.met) == (38.0, 40.0, True)
    share = found["trained F1-Recall ≥ 0.9 × all's"]
    assert (share.goal, share.measured, share.met) == (27.0, 28.0, True)
    cost = found["trained retrievals per question ≤ 0.5 × all's"]
    assert (cost.goal, cost.measured, cost.at_most, cost.met) == (3.0, 2.0, True, True)
    step1 = found[f"trained routing accuracy, {TWO_HOP} step 1 (%)"]
    step2 = found[STEP_2]
    assert (step1.measured, step1.met, step2.measured, step2.met) == (85, True, 70, False), "step 2 on the gold path"
    heldout = found[f"trained routing accuracy, {HELDOUT} (%)"]
    assert (heldout.goal, heldout.measured, heldout.met) == (70.0, 72, True)
    wall = found["demo wall time (min)"]
    assert (wall.goal, wall.measured, wall.met) == (25.0, 23.0, True)
    assert found["trained routing accuracy, all questions (%)"].met is True
    assert found["trained routing accuracy, demo-text (%)"].goal == 60.0
    assert not any(name.startswith(f"trained routing accuracy, {TWO_HOP} (%") for name in found), "own targets"


def test_a_missed_target_says_so():
    found = by_name(targets(systems(trained_two_hop=35.0), {"total": 1600.0}))
    assert found[f"trained F1-Recall ≥ best fixed (fixed:{TABLE}) + 10, {TWO_HOP}"].met is False
    assert found["demo wall time (min)"].met is False


def test_targets_whose_dataset_or_baseline_is_absent_are_not_measured():
    slice_only = {
        name: [r for r in reports if r.dataset in ("demo-text", "all")] for name, reports in systems().items()
    }
    del slice_only["all"]
    found = by_name(targets(slice_only))
    absent = [
        f"trained F1-Recall ≥ best fixed + 10, {TWO_HOP}",
        "trained F1-Recall ≥ 0.9 × all's",
        "trained retrievals per question ≤ 0.5 × all's",
        f"trained routing accuracy, {TWO_HOP} step 1 (%)",
        STEP_2,
        f"trained routing accuracy, {HELDOUT} (%)",
        "demo wall time (min)",
    ]
    assert all(found[name].met is None for name in absent)
    assert found[f"trained F1-Recall ≥ best fixed (fixed:{TABLE}) + 5, all questions"].met is True
    console = Console(record=True, width=200)
    console.print(targets_table(list(found.values())))
    text = console.export_text()
    assert text.count("not measured") == len(absent) and "MISSED" not in text


def test_report_json_carries_costs_steps_and_target_states(tmp_path):
    found = targets(systems(), {"total": 1380.0})
    written = json.loads(write_report(tmp_path, systems(), found, {"total": 1380.0}).read_text())
    two_hop = written["systems"]["trained"][TWO_HOP]
    assert [step["accuracy"] for step in two_hop["routing_by_step"]] == [85, 90]
    assert [step["on_path_accuracy"] for step in two_hop["routing_by_step"]] == [85, 70]
    assert (two_hop["retrievals_per_question"], two_hop["passages_per_question"]) == (2, 10)
    assert (two_hop["prompt_tokens_per_question"], two_hop["seconds_per_question"]) == (900.0, 2.5)
    states = {t["name"]: t["met"] for t in written["targets"]}
    assert states[STEP_2] is False
    absent = by_name(targets({"trained": [report("demo-text", 10, [90])]}))
    assert absent[f"trained routing accuracy, {HELDOUT} (%)"].met is None


def test_the_demo_figures_draw_each_steps_confusion_and_the_cost_scatter(tmp_path):
    written = {path.name for path in write_demo_figures(tmp_path, systems(), {})}
    assert {"systems_cost_f1_recall.png", "confusion_trained.png", "confusion_trained_step2.png"} <= written
    assert all((tmp_path / name).stat().st_size > 1000 for name in written)
