"""The report figures: each writes a PNG that opens as a real image; training figures read a sparse Lightning
``metrics.csv``; a log without the wanted columns is refused with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from more_lightning.agent.figures import (
    confusion_matrix_figure,
    cost_scatter,
    expert_usage_figure,
    read_metric_series,
    systems_bar_chart,
    training_curves,
)

pytestmark = pytest.mark.unit

# As Lightning's CSVLogger writes it: one row per logging call, a metric empty where it was not logged.
HEADER = "epoch,step,reward/mean,rollout/routing_accuracy,experts/text retriever,experts/table retriever,loss"
SPARSE_METRICS = f"""{HEADER},val/routing_accuracy
0,0,0.10,25.0,0.75,0.25,,
0,0,,,,,1.50,
0,1,0.20,50.0,0.50,0.50,,
0,1,,,,,1.20,
0,1,,,,,,40.0
0,2,0.35,75.0,,1.00,,
0,2,,,,,0.90,
0,3,,,,,,62.5
"""


@pytest.fixture
def metrics_csv(tmp_path) -> Path:
    path = tmp_path / "logs" / "metrics.csv"
    path.parent.mkdir()
    path.write_text(SPARSE_METRICS)
    return path


def assert_real_png(path: Path, min_width: int = 300, min_height: int = 200) -> None:
    """``path`` is a PNG of at least that size that is not a single flat colour."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_width and image.height >= min_height
        darkest, brightest = image.convert("L").getextrema()
        assert darkest < brightest


def test_systems_bar_chart(tmp_path):
    scores = {"MoRE": {"demo-text": 50.0, "demo-table": 33.3}, "all": {"demo-text": 40.0}, "none": {"demo-table": 5.0}}
    path = systems_bar_chart(scores, tmp_path / "new" / "folder" / "bars.png", ylabel="F1-Recall")
    assert path == tmp_path / "new" / "folder" / "bars.png"
    assert_real_png(path)


def test_confusion_matrix_figure(tmp_path):
    confusion = {
        "table retriever": {"table retriever": 3, "none": 1},
        "text retriever": {"(unparsed)": 1, "text retriever": 5, "table retriever, text retriever": 2},
    }
    assert_real_png(confusion_matrix_figure(confusion, tmp_path / "confusion.png", title="demo routing"))
    second = {"table retriever": {"table retriever": 2, "(ended)": 1}}
    assert_real_png(confusion_matrix_figure(second, tmp_path / "confusion_step2.png", "step 2", step=2))


def test_cost_scatter(tmp_path):
    points = {"trained": (1.6, 28.0), "all": (6.0, 30.0), "no_retrieval": (0.0, 8.0)}
    assert_real_png(cost_scatter(points, tmp_path / "cost.png"))


def test_read_metric_series_keeps_only_logged_rows(metrics_csv):
    series = read_metric_series(metrics_csv, ["loss", "experts/text retriever", "reward", "val/routing_accuracy"])
    assert series == {
        "loss": ([0.0, 1.0, 2.0], [1.5, 1.2, 0.9]),
        "experts/text retriever": ([0.0, 1.0], [0.75, 0.5]),
        "val/routing_accuracy": ([1.0, 3.0], [40.0, 62.5]),
    }


def test_training_curves(tmp_path, metrics_csv):
    assert_real_png(training_curves(metrics_csv, tmp_path / "figures" / "training.png"))


def test_training_curves_without_loss_column(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,reward\n0,0,0.1\n0,1,\n0,2,0.4\n")
    assert_real_png(training_curves(path, tmp_path / "training.png"))


def test_expert_usage_figure(tmp_path, metrics_csv):
    assert_real_png(expert_usage_figure(metrics_csv, tmp_path / "figures" / "experts.png"))


def test_csv_without_wanted_columns_is_refused(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,lr-AdamW,reward\n0,0,0.001,\n")
    with pytest.raises(ValueError, match=r"metrics\.csv: no values in any of the columns reward/mean, reward"):
        training_curves(path, tmp_path / "training.png")
    with pytest.raises(ValueError, match=r"metrics\.csv: no values in any column starting with 'experts/'"):
        expert_usage_figure(path, tmp_path / "experts.png")
    assert not (tmp_path / "training.png").exists()
