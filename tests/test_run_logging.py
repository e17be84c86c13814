"""W&B offline runs from the shipped logging overlay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from more_lightning.ops.wandb_offline import run_history
from more_lightning.train.run_logging import COLUMNS

ROOT = Path(__file__).resolve().parents[1]
TINY_FIT = ROOT / "configs" / "tiny" / "fit.yaml"
WANDB = ROOT / "configs" / "logging" / "wandb.yaml"
TRAJECTORIES = str(ROOT / "tests" / "fixtures" / "step_grpo_small.jsonl")


def _offline_env() -> dict:
    return dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")


def test_a_wandb_offline_run_keeps_the_config_metrics_and_rollout_tables(tmp_path):
    command = [sys.executable, "-m", "more_lightning", "fit", "--config", str(TINY_FIT), "--config", str(WANDB)]
    command += ["--trainer.max_steps", "3", "--data.trajectories", TRAJECTORIES]
    command += ["--trainer.callbacks+=more_lightning.train.run_logging.RolloutSamplesTable"]
    command += ["--trainer.callbacks.every_n_steps=1"]
    result = subprocess.run(command, cwd=tmp_path, env=_offline_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "wandb_logs" / "wandb").glob("offline-run-*")
    config = yaml.safe_load((run / "files" / "config.yaml").read_text())
    assert config["model"]["rollout"]["class_path"] == "more_lightning.train.rollout.RolloutCallback"
    history = run_history(next(run.glob("run-*.wandb")))
    rewards = [row["reward/mean"] for row in history if "reward/mean" in row]
    assert len(rewards) == 3
    tables = sorted((run / "files" / "media" / "table" / "rollouts").glob("step_*.table.json"))
    assert [t.name.split("_")[1] for t in tables] == ["1", "2", "3"]  # a new key per logging step, none overwritten
    table = json.loads(tables[0].read_text())
    assert table["columns"] == COLUMNS and table["data"]
