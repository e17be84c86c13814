"""W&B offline runs from the shipped logging overlay, and the local sweep engine on the shipped sweep file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from more_lightning.run_logging import COLUMNS
from more_lightning.sweep import SweepError, SweepSpec
from more_lightning.wandb_offline import run_history

ROOT = Path(__file__).resolve().parents[1]
TINY_FIT = ROOT / "configs" / "tiny" / "fit.yaml"
WANDB = ROOT / "configs" / "logging" / "wandb.yaml"
SWEEP = ROOT / "configs" / "sweep.yaml"
TRAJECTORIES = str(ROOT / "tests" / "fixtures" / "step_grpo_small.jsonl")


def _offline_env() -> dict:
    return dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")


def test_a_wandb_offline_run_keeps_the_config_metrics_and_rollout_tables(tmp_path):
    command = [sys.executable, "-m", "more_lightning", "fit", "--config", str(TINY_FIT), "--config", str(WANDB)]
    command += ["--trainer.max_steps", "3", "--data.trajectories", TRAJECTORIES]
    command += ["--trainer.callbacks+=more_lightning.run_logging.RolloutSamplesTable"]
    command += ["--trainer.callbacks.every_n_steps=1"]
    result = subprocess.run(command, cwd=tmp_path, env=_offline_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "wandb_logs" / "wandb").glob("offline-run-*")
    config = yaml.safe_load((run / "files" / "config.yaml").read_text())
    assert config["model"]["rollout"]["class_path"] == "more_lightning.rollout.RolloutCallback"
    history = run_history(next(run.glob("run-*.wandb")))
    rewards = [row["reward/mean"] for row in history if "reward/mean" in row]
    assert len(rewards) == 3
    tables = sorted((run / "files" / "media" / "table" / "rollouts").glob("step_*.table.json"))
    assert [t.name.split("_")[1] for t in tables] == ["1", "2", "3"]  # a new key per logging step, none overwritten
    table = json.loads(tables[0].read_text())
    assert table["columns"] == COLUMNS and table["data"]


def _sweep_spec(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load(SWEEP.read_text())
    raw.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_shipped_sweep_parses_and_every_parameter_is_a_fit_override():
    spec = SweepSpec.load(SWEEP)
    (values,) = spec.trials(1, seed=3)
    arguments = spec.arguments(values)
    assert arguments[:3] == [sys.executable, "-m", "more_lightning"]
    result = subprocess.run(arguments + ["--print_config"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = yaml.safe_load(result.stdout)
    for name, value in values.items():
        node = printed
        for key in name.split("."):
            node = node[key] if key in node else node["init_args"][key]
        assert node == pytest.approx(value), name


def test_sweep_files_the_local_engine_cannot_run_are_clear_errors(tmp_path):
    with pytest.raises(SweepError, match="W&B's server"):
        SweepSpec.load(_sweep_spec(tmp_path, method="bayes"))
    with pytest.raises(SweepError, match="grid search needs discrete"):
        SweepSpec.load(_sweep_spec(tmp_path, method="grid"))


def test_grid_trials_cover_the_grid_in_order(tmp_path):
    parameters = {"model.loss.beta": {"values": [0.0, 0.01]}, "model.rollout.group_size": {"values": [4, 8]}}
    spec = SweepSpec.load(_sweep_spec(tmp_path, method="grid", parameters=parameters))
    assert spec.trials(10) == [
        {"model.loss.beta": b, "model.rollout.group_size": n} for b in (0.0, 0.01) for n in (4, 8)
    ]


@pytest.mark.slow
def test_a_three_trial_local_sweep_on_the_tiny_model_prints_a_leaderboard(tmp_path):
    sweep_file = _sweep_spec(tmp_path)
    for folder in ("configs", "tests"):
        (tmp_path / folder).symlink_to(ROOT / folder)  # the sweep's command names configs/ relative to the cwd
    command = [sys.executable, "-m", "more_lightning", "sweep", str(sweep_file), "--count", "3"]
    command += ["--extra_args", json.dumps(["--trainer.max_steps=2"])]
    result = subprocess.run(command, cwd=tmp_path, env=_offline_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    board = json.loads((tmp_path / "sweeps" / "leaderboard.json").read_text())
    assert len(board) == 3 and all(t["score"] is not None for t in board)
    scores = [t["score"] for t in board]
    assert scores == sorted(scores, reverse=True)  # goal: maximize
    assert f"best: {board[0]['run_id']} reward/mean={board[0]['score']:.4f}" in result.stdout
    assert len(list((tmp_path / "wandb_logs" / "wandb").glob("offline-run-*"))) == 3
