"""Figures for reports: scores by system, F1-Recall against cost, the routing confusion matrix of each routing step,
and training curves from a Lightning log.

Each function writes one PNG (creating its folder) and returns its path. matplotlib is imported inside the functions,
so importing this module is cheap; the figures are drawn on matplotlib's file-only ``Agg`` backend, which needs no
display.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from more_lightning.errors import SettingError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TRAINING_PANELS = (
    ("reward", ("reward/mean", "reward")),
    ("routing accuracy", ("rollout/routing_accuracy", "val/routing_accuracy")),
    ("loss", ("loss", "loss/nll")),
)
"""The panels of ``training_curves``, top to bottom: a y-axis label and the ``metrics.csv`` columns drawn on it."""
EXPERT_SHARE_PREFIX = "experts/"
"""The ``metrics.csv`` columns holding each expert's share (0–1) of the routing samples."""
DPI = 120
"""Resolution of the written PNGs."""

Series = tuple[list[float], list[float]]
"""The steps and values of one metric, from the rows that logged it."""


def _new_figure(width: float, height: float) -> Figure:
    """An empty figure on the ``Agg`` backend (``matplotlib.use`` is called before ``pyplot`` is imported)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(width, height))


def _save(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG at ``path`` (creating its folder), release it, and return the path."""
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(out, dpi=DPI)
    plt.close(figure)
    return out


def systems_bar_chart(
    scores: dict[str, dict[str, float]],
    path: str | Path,
    title: str = "F1-Recall by system",
    ylabel: str = "F1-Recall",
) -> Path:
    """Grouped bars of one metric: a group per system (system → dataset → value), a bar per dataset, values on top."""
    systems = list(scores)
    datasets = list(dict.fromkeys(dataset for by_dataset in scores.values() for dataset in by_dataset))
    width = 0.8 / max(len(datasets), 1)
    figure = _new_figure(max(6.0, 2.0 + 0.7 * len(systems) * max(len(datasets), 1)), 4.5)
    axes = figure.add_subplot()
    for i, dataset in enumerate(datasets):
        placed = [(x, scores[system][dataset]) for x, system in enumerate(systems) if dataset in scores[system]]
        offsets = [x - 0.4 + width * (i + 0.5) for x, _ in placed]
        bars = axes.bar(offsets, [value for _, value in placed], width, label=dataset)
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
    axes.set_xticks(range(len(systems)), systems)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.margins(y=0.15)
    axes.legend(title="dataset", fontsize=8)
    return _save(figure, path)


def cost_scatter(
    points: dict[str, tuple[float, float]],
    path: str | Path,
    title: str = "F1-Recall against retrievals",
    xlabel: str = "retrievals per question",
) -> Path:
    """One labelled point per system (system → (cost, F1-Recall)): what an answer costs against how good it is."""
    figure = _new_figure(6.5, 4.5)
    axes = figure.add_subplot()
    for system, (cost, score) in points.items():
        axes.scatter([cost], [score])
        axes.annotate(system, (cost, score), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("F1-Recall")
    axes.set_title(title)
    axes.margins(0.2)
    axes.grid(alpha=0.3)
    return _save(figure, path)


def confusion_matrix_figure(
    confusion: dict[str, dict[str, int]],
    path: str | Path,
    title: str = "Routing: gold expert × first route",
    step: int = 1,
) -> Path:
    """A heatmap of a confusion matrix of routing step ``step`` (gold expert → route → count): gold on y, the route
    on x, counts in the cells; the routes sorted by name, ``none``, ``(unparsed)`` and ``(ended)`` last."""
    from more_lightning.agent.eval_reports import route_order

    golds = list(confusion)
    routes = route_order([route for row in confusion.values() for route in row])
    counts = [[confusion[gold].get(route, 0) for route in routes] for gold in golds]
    brightest = max((count for row in counts for count in row), default=0)
    figure = _new_figure(2.5 + 1.3 * len(routes), 1.8 + 0.6 * len(golds))
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap="Blues", vmin=0, vmax=max(brightest, 1), aspect="auto")
    for y, row in enumerate(counts):
        for x, count in enumerate(row):
            colour = "white" if count > brightest / 2 else "black"
            axes.text(x, y, str(count), ha="center", va="center", color=colour)
    axes.set_xticks(range(len(routes)), routes, rotation=30, ha="right")
    axes.set_yticks(range(len(golds)), golds)
    axes.set_xlabel("first route" if step == 1 else f"route at step {step}")
    axes.set_ylabel("gold expert")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="questions")
    return _save(figure, path)


def read_metric_series(metrics_csv: str | Path, columns: Sequence[str]) -> dict[str, Series]:
    """The (steps, values) of each of ``columns`` present in a Lightning ``metrics.csv`` with at least one value.

    The file's rows are sparse: a metric is empty on the rows where it was not logged; those rows are left out.
    """
    series: dict[str, Series] = {}
    with Path(metrics_csv).open(newline="") as handle:
        for row in csv.DictReader(handle):
            if not row.get("step"):
                continue
            for column in columns:
                if row.get(column):
                    steps, values = series.setdefault(column, ([], []))
                    steps.append(float(row["step"]))
                    values.append(float(row[column]))
    return {column: series[column] for column in columns if column in series}


def _csv_columns(metrics_csv: str | Path) -> list[str]:
    """The header of a CSV file."""
    with Path(metrics_csv).open(newline="") as handle:
        return next(csv.reader(handle), [])


def _label_steps(axes) -> None:
    """Name the x-axis ``step`` and tick it at whole steps only."""
    from matplotlib.ticker import MaxNLocator

    axes.set_xlabel("step")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def training_curves(metrics_csv: str | Path, path: str | Path) -> Path:
    """Reward, routing accuracy and loss against ``step`` from a Lightning CSVLogger ``metrics.csv``: one panel for
    each of ``TRAINING_PANELS`` that has values, a line per column (the columns of a panel share its y-axis, so they
    should share a scale); ValueError when none has."""
    wanted = [column for _, columns in TRAINING_PANELS for column in columns]
    series = read_metric_series(metrics_csv, wanted)
    panels = [(label, [c for c in columns if c in series]) for label, columns in TRAINING_PANELS]
    panels = [(label, columns) for label, columns in panels if columns]
    if not panels:
        raise SettingError(f"{metrics_csv}: no values in any of the columns {', '.join(wanted)}")
    figure = _new_figure(7.0, 2.4 * len(panels) + 0.6)
    first_axes = None
    for i, (label, columns) in enumerate(panels, start=1):
        axes = figure.add_subplot(len(panels), 1, i, sharex=first_axes)
        if first_axes is None:
            first_axes = axes
        for column in columns:
            steps, values = series[column]
            axes.plot(steps, values, marker="." if len(steps) < 50 else None, label=column)
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    _label_steps(axes)
    figure.suptitle("Training")
    return _save(figure, path)


def expert_usage_figure(metrics_csv: str | Path, path: str | Path) -> Path:
    """Each expert's share of the routing samples (the ``experts/<name>`` columns of a Lightning ``metrics.csv``)
    stacked over ``step``; a step where an expert was not logged counts as 0. ValueError when there are none."""
    columns = [column for column in _csv_columns(metrics_csv) if column.startswith(EXPERT_SHARE_PREFIX)]
    series = read_metric_series(metrics_csv, columns)
    if not series:
        raise SettingError(f"{metrics_csv}: no values in any column starting with {EXPERT_SHARE_PREFIX!r}")
    shares_at = {column: dict(zip(steps, values, strict=True)) for column, (steps, values) in series.items()}
    steps = sorted({step for by_step in shares_at.values() for step in by_step})
    figure = _new_figure(7.0, 4.0)
    axes = figure.add_subplot()
    axes.stackplot(
        steps,
        [[by_step.get(step, 0.0) for step in steps] for by_step in shares_at.values()],
        labels=[column.removeprefix(EXPERT_SHARE_PREFIX) for column in shares_at],
        alpha=0.85,
    )
    _label_steps(axes)
    axes.set_ylabel("share of routing samples")
    axes.set_title("Expert usage")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(figure, path)
