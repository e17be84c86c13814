"""W&B offline runs from the shipped logging overlay (the shared tiny fit logs with it)."""

from __future__ import annotations

import json

import pytest
import yaml

from more_lightning.ops.wandb_offline import run_history
from more_lightning.train.run_logging import COLUMNS
from tests.conftest import FITTED_RUN_STEPS

pytestmark = pytest.mark.integration


def test_a_wandb_offline_run_keeps_the_config_metrics_and_rollout_tables(fitted_tiny_run):
    (run,) = (fitted_tiny_run / "wandb_logs" / "wandb").glob("offline-run-*")
    config = yaml.safe_load((run / "files" / "config.yaml").read_text())
    assert config["model"]["rollout"]["class_path"] == "more_lightning.train.rollout.RolloutCallback"
    history = run_history(next(run.glob("run-*.wandb")))
    rewards = [row["reward/mean"] for row in history if "reward/mean" in row]
    assert len(rewards) == FITTED_RUN_STEPS
    tables = sorted((run / "files" / "media" / "table" / "rollouts").glob("step_*.table.json"))
    assert [t.name.split("_")[1] for t in tables] == ["1", "2", "3"]  # a new key per logging step, none overwritten
    table = json.loads(tables[0].read_text())
    assert table["columns"] == COLUMNS and table["data"]
