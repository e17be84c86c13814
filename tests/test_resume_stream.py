"""Resuming ``fit`` with other data or rollout settings stops before anything loads: the data position and the
rollout buffer saved in the checkpoint belong to the data and sampling they were made with."""

from __future__ import annotations

import shutil
from pathlib import Path

from more_lightning import cli

ROOT = Path(__file__).resolve().parents[1]
TRAJECTORIES = ROOT / "tests" / "fixtures" / "step_grpo_small.jsonl"


def test_a_resume_onto_other_data_or_rollout_settings_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copy(TRAJECTORIES, tmp_path / "same.jsonl")
    shutil.copy(TRAJECTORIES, tmp_path / "other.jsonl")
    fit = ["fit", "--config", str(ROOT / "configs" / "tiny" / "fit.yaml"), "--trainer.logger", "false"]
    fit += ["--model.policy.quantization", "none", "--data.trajectories", "same.jsonl"]
    assert cli.main([*fit, "--trainer.max_steps", "1"]) == 0
    resume = [*fit, "--trainer.max_steps", "2", "--ckpt_path", "checkpoints/tiny/last.ckpt"]
    capsys.readouterr()
    changed = ["--data.trajectories", "other.jsonl", "--model.rollout.init_args.group_size", "3"]
    assert cli.main([*resume, *changed, "--model.rollout.init_args.sampling.temperature", "0.7"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1
    assert f"data.trajectories: saved '{tmp_path / 'same.jsonl'}', given '{tmp_path / 'other.jsonl'}'" in err
    assert "model.rollout.init_args.group_size: saved 4, given 3" in err
    assert "model.rollout.init_args.sampling.temperature: saved 1.0, given 0.7" in err
    assert cli.main(resume) == 0, capsys.readouterr().err[-3000:]
