"""What the demo shows at the end: the systems' table with the issue's targets, ``report.json`` and the figures.

The systems are run on the same held-out questions (``configs/demo/eval.yaml``): ``untrained`` (the base policy
routing), the baselines with the trained policy answering — ``no_retrieval``, ``fixed:<expert>``, ``all``, ``gold``
(the routing oracle) — and ``trained`` (the trained policy routing). Routing accuracy compares each question's first
routing step with its gold expert.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.table import Table

from more_lightning.agent.evaluation import DatasetReport

ROUTING_TARGET_OVERALL = 80.0
"""Trained routing accuracy, all questions (percent)."""
ROUTING_TARGET_PER_DATASET = 60.0
"""Trained routing accuracy on each dataset (percent)."""
F1_MARGIN_OVER_BEST_FIXED = 5.0
"""Trained F1-Recall over the best fixed-expert baseline (points)."""


def system_name(router: str, trained: bool) -> str:
    """The report's name of a run: ``untrained`` / ``trained`` for the policy's own routing, else the baseline's."""
    if router == "policy":
        return "trained" if trained else "untrained"
    return "no_retrieval" if router == "none" else router


@dataclass
class Target:
    """One of the demo's targets, measured."""

    name: str
    goal: float
    measured: float | None

    @property
    def met(self) -> bool:
        return self.measured is not None and self.measured >= self.goal


def overall(reports: Sequence[DatasetReport]) -> DatasetReport:
    """The ``all`` row (or the single dataset's)."""
    return next((r for r in reports if r.dataset == "all"), reports[-1])


def targets(systems: dict[str, Sequence[DatasetReport]]) -> list[Target]:
    """The routing and F1-Recall targets of the trained policy, measured against the baselines."""
    trained = systems["trained"]
    found = [
        Target("trained routing accuracy, all questions (%)", ROUTING_TARGET_OVERALL, overall(trained).routing_accuracy)
    ]
    for report in trained:
        if report.dataset != "all":
            found.append(
                Target(
                    f"trained routing accuracy, {report.dataset} (%)",
                    ROUTING_TARGET_PER_DATASET,
                    report.routing_accuracy,
                )
            )
    fixed = {name: overall(reports).f1_recall for name, reports in systems.items() if name.startswith("fixed:")}
    if fixed:
        best = max(fixed, key=fixed.get)
        goal = fixed[best] + F1_MARGIN_OVER_BEST_FIXED
        found.append(Target(f"trained F1-Recall ≥ best fixed ({best}) + 5", goal, overall(trained).f1_recall))
    return found


def targets_table(found: Sequence[Target]) -> Table:
    table = Table(title="Targets")
    for column in ("target", "goal", "measured", "met"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for target in found:
        measured = "-" if target.measured is None else f"{target.measured:.1f}"
        table.add_row(target.name, f"{target.goal:.1f}", measured, "yes" if target.met else "[red]MISSED[/]")
    return table


def write_report(
    folder: Path, systems: dict[str, Sequence[DatasetReport]], found: Sequence[Target], seconds: dict[str, float]
) -> Path:
    """``report.json``: per system and dataset the F1-Recall, routing accuracy and question count; the targets; the
    wall time of each stage."""
    report = {
        "systems": {
            name: {
                r.dataset: {
                    "f1_recall": r.f1_recall,
                    "routing_accuracy": r.routing_accuracy,
                    "questions": r.questions,
                    "confusion": r.confusion,
                }
                for r in reports
            }
            for name, reports in systems.items()
        },
        "targets": [dict(asdict(t), met=t.met) for t in found],
        "seconds": seconds,
    }
    path = folder / "report.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return path


def write_demo_figures(folder: Path, systems: dict[str, Sequence[DatasetReport]], logs: dict[str, Path]) -> list[Path]:
    """The systems' bar charts (F1-Recall, routing accuracy), the trained policy's confusion matrix, and the training
    curves and expert usage of each training stage (``logs``: stage → its ``metrics.csv``)."""
    from more_lightning.agent.figures import (
        confusion_matrix_figure,
        expert_usage_figure,
        systems_bar_chart,
        training_curves,
    )

    scores = {name: {r.dataset: r.f1_recall for r in reports} for name, reports in systems.items()}
    routing = {
        name: {r.dataset: r.routing_accuracy for r in reports if r.routing_accuracy is not None}
        for name, reports in systems.items()
    }
    written = [
        systems_bar_chart(scores, folder / "systems_f1_recall.png"),
        systems_bar_chart(
            routing, folder / "systems_routing_accuracy.png", "Routing accuracy by system", "routing accuracy (%)"
        ),
    ]
    for name in ("untrained", "trained"):
        if name in systems and overall(systems[name]).confusion:
            title = f"Routing of the {name} policy: gold expert × first route"
            written.append(
                confusion_matrix_figure(overall(systems[name]).confusion, folder / f"confusion_{name}.png", title)
            )
    for stage, metrics in logs.items():
        written.append(training_curves(metrics, folder / f"training_{stage}.png"))
        try:
            written.append(expert_usage_figure(metrics, folder / f"expert_usage_{stage}.png"))
        except ValueError:  # a stage that never routes on its own samples (the supervised warm start)
            pass
    return written
