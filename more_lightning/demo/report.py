"""What the demo shows at the end: the systems' table with the issue's targets, ``report.json`` and the figures.

The systems are run on the same held-out questions (``configs/demo/eval.yaml``): ``untrained`` (the base policy
routing), the baselines with the trained policy answering — ``no_retrieval``, ``fixed:<expert>``, ``all``, ``gold``
(the routing oracle) — and ``trained`` (the trained policy routing). Routing accuracy compares each routing step's
route with that step's gold expert; each system's costs (retrievals, passages, prompt tokens and seconds per question)
stand beside its scores. A target whose dataset or baseline was not run reads "not measured".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.table import Table

from more_lightning.agent.eval_reports import DatasetReport, overall

ROUTING_TARGET_OVERALL = 80.0
"""Trained routing accuracy at the first step, all questions (percent)."""
ROUTING_TARGET_PER_DATASET = 60.0
"""Trained routing accuracy at the first step on each dataset without a target of its own (percent)."""
F1_MARGIN_OVER_BEST_FIXED = 5.0
"""Trained F1-Recall over the best fixed-expert baseline, all questions (points)."""
TWO_HOP = "demo-two-hop"
"""The dataset of questions that need two experts in turn."""
F1_MARGIN_TWO_HOP = 10.0
"""Trained F1-Recall over the best fixed-expert baseline on the two-expert questions (points)."""
ROUTING_TARGET_TWO_HOP = 80.0
"""Trained routing accuracy at step 1 and at step 2 of the two-expert questions (percent); step 2 on the gold path
(right at step 1 too), so that asking the second hop's expert twice does not count."""
HELDOUT = "demo-heldout-phrasing"
"""The dataset of questions phrased as no training question is (held-out templates)."""
ROUTING_TARGET_HELDOUT = 70.0
"""Trained routing accuracy on the held-out phrasings (percent)."""
F1_SHARE_OF_ALL = 0.9
"""Trained F1-Recall as a share of the ``all`` baseline's (every expert at every step)..."""
RETRIEVAL_SHARE_OF_ALL = 0.5
"""... at most this share of its retrievals per question."""
DEMO_MINUTES = 25.0
"""The whole ``make demo`` run, data and index cached (minutes)."""


def system_name(router: str, trained: bool) -> str:
    """The report's name of a run: ``untrained`` / ``trained`` for the policy's own routing, else the baseline's."""
    if router == "policy":
        return "trained" if trained else "untrained"
    return "no_retrieval" if router == "none" else router


@dataclass
class Target:
    """One of the demo's targets, measured; ``None`` (goal or measure) where its dataset or baseline was not run."""

    name: str
    goal: float | None
    measured: float | None
    at_most: bool = False
    """The measure must stay at or below the goal (a cost), not reach it."""

    @property
    def met(self) -> bool | None:
        """Whether the target is met; ``None``: not measured."""
        if self.goal is None or self.measured is None:
            return None
        return self.measured <= self.goal if self.at_most else self.measured >= self.goal


def dataset(reports: Sequence[DatasetReport], name: str) -> DatasetReport | None:
    """The report of dataset ``name``, ``None`` where it was not run."""
    return next((r for r in reports if r.dataset == name), None)


def step_routing(report: DatasetReport | None, step: int, on_path: bool = False) -> float | None:
    """Routing accuracy at routing ``step`` (from 1) — ``on_path``: right at every step up to it — ``None`` where not
    measured."""
    found = next((s for s in report.routing_by_step if s.step == step), None) if report else None
    if found is None:
        return None
    return found.on_path_accuracy if on_path else found.accuracy


def _best_fixed(systems: dict[str, Sequence[DatasetReport]], name: str | None, margin: float) -> Target:
    """Trained F1-Recall ≥ the best fixed-expert baseline + ``margin`` on dataset ``name`` (``None``: all questions)."""
    pick = overall if name is None else (lambda reports: dataset(reports, name))
    fixed = {system: pick(reports) for system, reports in systems.items() if system.startswith("fixed:")}
    fixed = {system: report.f1_recall for system, report in fixed.items() if report is not None}
    best = max(fixed, key=fixed.get) if fixed else None
    label = f"trained F1-Recall ≥ best fixed{f' ({best})' if best else ''} + {margin:.0f}, {name or 'all questions'}"
    trained = pick(systems["trained"])
    goal = fixed[best] + margin if best else None
    return Target(label, goal, trained.f1_recall if trained else None)


def targets(systems: dict[str, Sequence[DatasetReport]], seconds: dict[str, float] | None = None) -> list[Target]:
    """The demo's targets for the trained policy, measured against the baselines; ``seconds``: the stages' wall time
    (``total`` for the whole run)."""
    trained = systems["trained"]
    found = [
        Target("trained routing accuracy, all questions (%)", ROUTING_TARGET_OVERALL, overall(trained).routing_accuracy)
    ]
    for report in trained:
        if report.dataset not in ("all", TWO_HOP, HELDOUT):
            name = f"trained routing accuracy, {report.dataset} (%)"
            found.append(Target(name, ROUTING_TARGET_PER_DATASET, report.routing_accuracy))
    found += [_best_fixed(systems, None, F1_MARGIN_OVER_BEST_FIXED), _best_fixed(systems, TWO_HOP, F1_MARGIN_TWO_HOP)]
    everything = overall(systems["all"]) if "all" in systems else None
    found += [
        Target(
            f"trained F1-Recall ≥ {F1_SHARE_OF_ALL} × all's",
            F1_SHARE_OF_ALL * everything.f1_recall if everything else None,
            overall(trained).f1_recall,
        ),
        Target(
            f"trained retrievals per question ≤ {RETRIEVAL_SHARE_OF_ALL} × all's",
            RETRIEVAL_SHARE_OF_ALL * everything.average_retrieval_calls if everything else None,
            overall(trained).average_retrieval_calls,
            at_most=True,
        ),
    ]
    two_hop = dataset(trained, TWO_HOP)
    found.append(
        Target(f"trained routing accuracy, {TWO_HOP} step 1 (%)", ROUTING_TARGET_TWO_HOP, step_routing(two_hop, 1))
    )
    name = f"trained routing accuracy, {TWO_HOP} step 2, right at step 1 too (%)"
    found.append(Target(name, ROUTING_TARGET_TWO_HOP, step_routing(two_hop, 2, on_path=True)))
    heldout = dataset(trained, HELDOUT)
    name = f"trained routing accuracy, {HELDOUT} (%)"
    found.append(Target(name, ROUTING_TARGET_HELDOUT, heldout.routing_accuracy if heldout else None))
    total = (seconds or {}).get("total")
    found.append(Target("demo wall time (min)", DEMO_MINUTES, total / 60 if total is not None else None, at_most=True))
    return found


def targets_table(found: Sequence[Target]) -> Table:
    table = Table(title="Targets")
    for column in ("target", "goal", "measured", "met"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for target in found:
        goal = "-" if target.goal is None else f"{'≤' if target.at_most else '≥'} {target.goal:.1f}"
        measured = "-" if target.measured is None else f"{target.measured:.1f}"
        met = {None: "not measured", True: "yes", False: "[red]MISSED[/]"}[target.met]
        table.add_row(target.name, goal, measured, met)
    return table


def write_report(
    folder: Path, systems: dict[str, Sequence[DatasetReport]], found: Sequence[Target], seconds: dict[str, float]
) -> Path:
    """``report.json``: per system and dataset the F1-Recall, routing accuracy (first step, and each step), question
    count and costs per question; the targets (``met``: true, false, or null where not measured); the wall time of
    each stage."""
    report = {
        "systems": {
            name: {
                r.dataset: {
                    "f1_recall": r.f1_recall,
                    "routing_accuracy": r.routing_accuracy,
                    "questions": r.questions,
                    "confusion": r.confusion,
                    "routing_by_step": [asdict(step) for step in r.routing_by_step],
                    "retrievals_per_question": r.average_retrieval_calls,
                    "passages_per_question": r.passages_per_question,
                    "prompt_tokens_per_question": r.prompt_tokens_per_question,
                    "seconds_per_question": r.seconds_per_question,
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
    """The systems' bar charts (F1-Recall, routing accuracy), F1-Recall against retrievals per question, the untrained
    and trained policies' confusion matrices (one per routing step), and the training curves and expert usage of each
    training stage (``logs``: stage → its ``metrics.csv``)."""
    from more_lightning.agent.figures import (
        confusion_matrix_figure,
        cost_scatter,
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
        cost_scatter(
            {
                name: (overall(reports).average_retrieval_calls, overall(reports).f1_recall)
                for name, reports in systems.items()
            },
            folder / "systems_cost_f1_recall.png",
        ),
    ]
    for name in ("untrained", "trained"):
        for routing in overall(systems[name]).routing_by_step if name in systems else ():
            title = f"Routing of the {name} policy, step {routing.step}: gold expert × route"
            path = folder / (
                f"confusion_{name}.png" if routing.step == 1 else f"confusion_{name}_step{routing.step}.png"
            )
            written.append(confusion_matrix_figure(routing.confusion, path, title, routing.step))
    for stage, metrics in logs.items():
        written.append(training_curves(metrics, folder / f"training_{stage}.png"))
        try:
            written.append(expert_usage_figure(metrics, folder / f"expert_usage_{stage}.png"))
        except ValueError:  # a stage that never routes on its own samples (the supervised warm start)
            pass
    return written
