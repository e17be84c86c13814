"""Sweeps: the shipped W&B sweep file run as an Optuna study on the tiny model (SQLite storage, real fits)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from more_lightning.ops.sweep_spec import SweepError, SweepSpec

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "configs" / "sweep.yaml"
BETAS = [0.0, 0.01, 0.1]


def _sweep_file(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load(SWEEP.read_text())
    raw.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _small(tmp_path: Path, method: str) -> Path:
    """The shipped sweep with cheap parameters: beta over three values (a grid of 3), lr in a range (bayes)."""
    for folder in ("configs", "tests"):
        if not (tmp_path / folder).exists():
            (tmp_path / folder).symlink_to(ROOT / folder)  # the command names configs/ relative to the cwd
    parameters = {"model.loss.beta": {"values": BETAS}}
    if method != "grid":
        parameters["model.optimizer.lr"] = {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3}
    return _sweep_file(tmp_path, method=method, parameters=parameters)


def _command(sweep_file: Path, count: int, storage: str) -> list[str]:
    command = [sys.executable, "-m", "more_lightning", "sweep", str(sweep_file), "--count", str(count)]
    return command + ["--storage", storage, "--extra_args", json.dumps(["--trainer.max_steps=2"])]


def _env() -> dict:
    return dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1")


def _finished(storage: str, name: str = "sweep") -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=storage)
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


@pytest.mark.integration
def test_the_shipped_sweep_parses_and_every_parameter_is_a_fit_override(run_cli):
    spec = SweepSpec.load(SWEEP)
    values = spec.suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3)).ask())
    arguments = spec.arguments(values)
    assert arguments[:3] == [sys.executable, "-m", "more_lightning"]
    result = run_cli(*arguments[3:], "--print_config", cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = yaml.safe_load(result.stdout)
    for name, value in values.items():
        node = printed
        for key in name.split("."):
            node = node[key] if key in node else node["init_args"][key]
        assert node == pytest.approx(value), name


@pytest.mark.unit
def test_sweep_files_the_engine_cannot_run_are_errors_that_name_the_key(tmp_path):
    with pytest.raises(SweepError, match=r"unsupported key\(s\) \['run_cap_typo'\]"):
        SweepSpec.load(_sweep_file(tmp_path, run_cap_typo=3))
    with pytest.raises(SweepError, match=r"parameter 'model.loss.beta': unsupported key\(s\) \['q'\]"):
        SweepSpec.load(_sweep_file(tmp_path, parameters={"model.loss.beta": {"values": [0.0], "q": 2}}))
    with pytest.raises(SweepError, match="grid search needs discrete"):
        SweepSpec.load(_sweep_file(tmp_path, method="grid"))
    with pytest.raises(SweepError, match="early_terminate"):
        SweepSpec.load(_sweep_file(tmp_path, early_terminate={"type": "envelope"}))
    assert SweepSpec.load(_sweep_file(tmp_path, method="bayes")).method == "bayes"


@pytest.mark.unit
def test_methods_and_early_terminate_map_to_optunas_samplers_and_pruner(tmp_path):
    from more_lightning.ops.sweep import _pruner, _sampler

    expected = {
        "random": optuna.samplers.RandomSampler,
        "grid": optuna.samplers.GridSampler,
        "bayes": optuna.samplers.TPESampler,
    }
    for method, sampler in expected.items():
        assert isinstance(_sampler(SweepSpec.load(_small(tmp_path, method)), 0), sampler)
    assert isinstance(_pruner(SweepSpec.load(SWEEP)), optuna.pruners.NopPruner)
    hyperband = {"type": "hyperband", "min_iter": 2, "eta": 2}
    pruner = _pruner(SweepSpec.load(_sweep_file(tmp_path, early_terminate=hyperband)))
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("method", ["grid", "bayes"])
def test_a_three_trial_sweep_fills_the_study_and_prints_a_leaderboard(tmp_path, method):
    storage = f"sqlite:///{tmp_path}/study.db"
    result = subprocess.run(
        _command(_small(tmp_path, method), 3, storage), cwd=tmp_path, env=_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    trials = _finished(storage)
    assert len(trials) == 3 and all(t.value is not None for t in trials)
    if method == "grid":
        assert sorted(t.params["model.loss.beta"] for t in trials) == BETAS
    board = json.loads((tmp_path / "sweeps" / "leaderboard.json").read_text())
    values = [row["value"] for row in board]
    assert values == sorted(values, reverse=True)  # goal: maximize
    assert f"best: trial {board[0]['number']} reward/mean={board[0]['value']:.4f}" in result.stdout
    assert len(list((tmp_path / "wandb_logs" / "wandb").glob("offline-run-*"))) == 3, "each trial a W&B run"


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_stopped_sweep_resumes_to_the_count_without_repeating_finished_trials(tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    sweep_file = _small(tmp_path, "grid")
    first = subprocess.Popen(_command(sweep_file, 3, storage), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL)
    second_trial = tmp_path / "sweeps" / "trial-1.log"  # the files, not the study: no reader on the live database
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and first.poll() is None and not second_trial.exists():
        time.sleep(0.5)
    first.send_signal(signal.SIGTERM)  # stop it during its second trial
    first.wait(timeout=120)
    done = _finished(storage)
    assert len(done) == 1
    result = subprocess.run(_command(sweep_file, 3, storage), cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    trials = _finished(storage)
    assert len(trials) == 3 and sorted(t.params["model.loss.beta"] for t in trials) == BETAS
    assert done[0].number in [t.number for t in trials], "the finished trial is kept, not run again"


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_two_workers_on_one_sqlite_study_run_distinct_trials(tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    sweep_file = _small(tmp_path, "random")
    subprocess.run(_command(sweep_file, 0, storage), cwd=tmp_path, env=_env(), capture_output=True)  # create it
    workers = [
        subprocess.Popen(_command(sweep_file, 4, storage), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL)
        for _ in range(2)
    ]
    assert [w.wait(timeout=900) for w in workers] == [0, 0]
    trials = _finished(storage)
    assert len(trials) >= 4
    assert len({t.number for t in trials}) == len(trials)
    assert len({t.params["model.optimizer.lr"] for t in trials}) == len(trials), "no trial ran twice"
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "both workers ran trials"
