"""Two CPU processes (gloo) through the CLI with the shipped strategy YAMLs: DDP, FSDP and FSDP2 on the tiny model."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
TINY_FIT = ROOT / "configs" / "tiny" / "fit.yaml"
TRAJECTORIES = ROOT / "tests" / "fixtures" / "step_grpo_small.jsonl"


def _config(tmp_path: Path) -> Path:
    """The tiny fit config with one teacher demonstration per group (non-zero rewards to compare across ranks)."""
    config = yaml.safe_load(TINY_FIT.read_text())
    config["data"].update(trajectories=str(TRAJECTORIES), groups_per_batch=2)
    config["trainer"]["enable_checkpointing"] = False
    config["model"]["rollout"]["init_args"].update(groups_per_rollout=2, demonstrations=1)
    recorder = {"class_path": "rank_recorder.RecordRolloutGroups", "init_args": {"folder": str(tmp_path)}}
    config["trainer"]["callbacks"] = [recorder]
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(tmp_path: Path, strategy: str, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "more_lightning", "fit", "--config", str(_config(tmp_path))]
    command += ["--config", str(ROOT / "configs" / "strategies" / strategy), "--trainer.max_steps", "2", *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"  # two processes on two cores
    # an empty cache: the ranks must build the tiny model completely (it was half-built by rank 1 once)
    env["MORE_LIGHTNING_CACHE"] = str(tmp_path / "empty-cache")
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def _rank_rows(tmp_path: Path) -> list[list[dict]]:
    return [[json.loads(line) for line in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]


def _logged_rewards(tmp_path: Path) -> dict[int, float]:
    (path,) = (tmp_path / "lightning_logs").rglob("metrics.csv")
    with path.open() as handle:
        return {int(r["step"]): float(r["reward/mean"]) for r in csv.DictReader(handle) if r.get("reward/mean")}


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("strategy", ["ddp.yaml", "fsdp.yaml", "fsdp2.yaml"])
def test_two_rank_fit_shares_out_groups_and_logs_the_global_reward(tmp_path, strategy):
    result = _fit(tmp_path, strategy)
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = _rank_rows(tmp_path)
    assert len(rank0) == len(rank1) == 2 and rank0[0]["world_size"] == 2
    logged = _logged_rewards(tmp_path)
    for step, (a, b) in enumerate(zip(rank0, rank1, strict=True)):
        assert a["prompts"] and not set(a["prompts"]) & set(b["prompts"]), "a group was rolled out on both ranks"
        local = [sum(sum(r) for r in row["rewards"]) / sum(len(r) for r in row["rewards"]) for row in (a, b)]
        assert logged[step] == pytest.approx(sum(local) / 2, rel=1e-5)
