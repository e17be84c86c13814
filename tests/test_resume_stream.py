"""Resuming ``fit`` with other data or rollout settings stops before anything loads: the data position and the
rollout buffer saved in the checkpoint belong to the data and sampling they were made with."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import FITTED_RUN_SETTINGS, FITTED_RUN_STEPS

pytestmark = pytest.mark.integration

TRAJECTORIES = FITTED_RUN_SETTINGS[FITTED_RUN_SETTINGS.index("--data.trajectories") + 1]


def test_a_resume_onto_other_data_or_rollout_settings_is_refused(fitted_tiny_copy, run_cli):
    other = shutil.copy(TRAJECTORIES, fitted_tiny_copy / "other.jsonl")
    resume = ["fit", *FITTED_RUN_SETTINGS, "--trainer.logger", "false", "--ckpt_path", "checkpoints/tiny/last.ckpt"]
    resume += ["--trainer.max_steps", str(FITTED_RUN_STEPS + 1)]
    changed = ["--data.trajectories", str(other), "--model.rollout.init_args.group_size", "3"]
    changed += ["--model.rollout.init_args.sampling.temperature", "0.7"]
    refused = run_cli(*resume, *changed, cwd=fitted_tiny_copy)
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr and refused.stderr.count("error:") == 1, refused.stderr[-3000:]
    assert f"data.trajectories: saved '{TRAJECTORIES}', given '{other}'" in refused.stderr
    assert "model.rollout.init_args.group_size: saved 4, given 3" in refused.stderr
    assert "model.rollout.init_args.sampling.temperature: saved 1.0, given 0.7" in refused.stderr
    resumed = run_cli(*resume, cwd=fitted_tiny_copy)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
