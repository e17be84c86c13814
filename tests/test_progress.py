"""Progress when stdout is not a terminal: plain lines at least every interval (also while a long call runs), not a
bar drawn only at the end; fits count optimizer steps of ``max_steps``."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress, Task

from more_lightning.progress import LineProgress, duration, progress_bar, progress_line
from more_lightning.train.progress import StepProgress, metrics_status

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.unit


def test_a_pipe_gets_plain_progress_lines(capsys):
    progress = progress_bar(console=Console(file=io.StringIO()))
    assert isinstance(progress, LineProgress)
    with progress:
        task = progress.add_task("questions", total=3, unit="questions")
        for _ in range(3):
            progress.advance(task)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("questions: 1/3 questions") and lines[-1].startswith("questions: 3/3 questions")
    assert len(lines) == 2, "one line at the first move, then one per interval, and one when done"


def test_a_stage_that_does_not_move_still_prints_a_line_per_interval(capsys):
    with LineProgress(every=0.1) as progress:
        task = progress.add_task("router policy", total=2, unit="questions", status="batch 1/1 of 2")
        time.sleep(0.55)  # one long batch of episodes
        progress.advance(task, 2)
    lines = capsys.readouterr().out.splitlines()
    waiting = [line for line in lines if line.startswith("router policy: 0/2 questions, batch 1/1 of 2, ")]
    assert 4 <= len(waiting) <= 7, lines
    assert lines[-1].startswith("router policy: 2/2 questions, batch 1/1 of 2, ") and len(lines) == len(waiting) + 1


def _task(description: str, **fields) -> Task:
    progress = Progress(disable=True)
    task_id = progress.add_task(description, **fields)
    return next(task for task in progress.tasks if task.id == task_id)


def test_a_line_says_the_count_the_status_the_time_and_the_time_left():
    task = _task("demo", total=10, completed=4, unit="steps", status="reward 0.5")
    assert progress_line(task, elapsed=20) == "demo: 4/10 steps, reward 0.5, 20 s, ~30 s left"
    resumed = _task("demo", total=10, completed=6, start_count=4, unit="steps")
    assert progress_line(resumed, elapsed=100) == "demo: 6/10 steps, 1 min 40 s, ~3 min 20 s left"
    unknown = _task("converting model.gguf (once)", total=None)
    assert progress_line(unknown, elapsed=12) == "converting model.gguf (once): 12 s"
    assert [duration(s) for s in (59.4, 61, 3725)] == ["59 s", "1 min 01 s", "1 h 02 min"]


def test_the_time_left_counts_the_share_of_the_unit_in_progress():
    """An evaluation advances by whole batches; half-way through its second batch of 75 questions, at 150 s, the
    estimate counts the 37.5 questions' worth of work begun, so it shrinks through the batch instead of growing."""
    before = _task("router policy", total=180, completed=75, unit="questions")
    assert progress_line(before, elapsed=150).endswith("~3 min 30 s left")  # 150 s / 75 × 105
    halfway = _task("router policy", total=180, completed=75, partial=37.5, unit="questions")
    assert progress_line(halfway, elapsed=150) == "router policy: 75/180 questions, 2 min 30 s, ~1 min 30 s left"


def test_the_status_shows_the_scalars_and_the_routing_mix_as_shares():
    metrics = {"reward": 0.41234, "→table retriever": 0.5, "→text retriever": 0.25, "→(unparsed)": 0.25}
    assert metrics_status(metrics) == "reward 0.4123, routing →table retriever 50% →text retriever 25% →(unparsed) 25%"
    assert metrics_status({"nll": 2.5}) == "nll 2.5"


def test_a_fit_prints_optimizer_steps_of_max_steps_at_each_interval(tmp_path, monkeypatch, capsys):
    """The tiny fit, 2 optimizer steps of 2 micro-batches each: lines count steps (k/2, never the 4 batches), carry
    the reward and routing mix once a step has run, and arrive while a step runs."""
    from more_lightning.ops.lightning_cli import run_lightning_cli

    monkeypatch.chdir(tmp_path)
    progress = "[{class_path: more_lightning.train.progress.StepProgress, init_args: {every: 0.2}}]"
    cli = run_lightning_cli(
        ["fit", "--config", str(ROOT / "configs" / "tiny" / "fit.yaml"), "--trainer.max_steps", "2"]
        + ["--trainer.accumulate_grad_batches", "2", "--trainer.callbacks", progress]
        + [
            "--trainer.enable_checkpointing",
            "false",
            "--data.trajectories",
            str(ROOT / "tests/fixtures/step_grpo_small.jsonl"),
        ]
    )
    assert isinstance(cli.trainer.progress_bar_callback, StepProgress)
    out = capsys.readouterr().out
    assert "Epoch" not in out
    lines = [line for line in out.splitlines() if line.startswith("tiny-fit: ")]
    counts = [tuple(map(int, re.match(r"tiny-fit: (\d+)/(\d+) steps", line).groups())) for line in lines]
    assert {total for _, total in counts} == {2}
    steps = [step for step, _ in counts]
    assert steps == sorted(steps) and set(steps) == {0, 1, 2}, lines
    assert all("reward" in line and "routing →" in line for line in lines if not line.startswith("tiny-fit: 0/2"))
    assert "~" in lines[-2] and " left" in lines[-2] and lines[-1].startswith("tiny-fit: 2/2 steps")


def test_fits_get_the_step_bar_unless_a_config_turns_the_bar_off(tmp_path, monkeypatch):
    from more_lightning.ops.lightning_cli import run_lightning_cli

    monkeypatch.chdir(tmp_path)
    base = ["validate", "--config", str(ROOT / "configs" / "tiny" / "fit.yaml")]
    base += ["--data.trajectories", str(ROOT / "tests/fixtures/step_grpo_small.jsonl")]
    assert isinstance(run_lightning_cli(base).trainer.progress_bar_callback, StepProgress)
    assert run_lightning_cli([*base, "--trainer.enable_progress_bar", "false"]).trainer.progress_bar_callback is None


def test_every_loop_of_a_lightning_run_gets_its_own_count(capsys):
    """Lightning's BoringModel, 4 steps of 2 batches with a validation of 2 batches after the first 4 batches: the
    fit counts steps, the sanity check and the validation count their batches."""
    import lightning.pytorch as pl
    from lightning.pytorch.demos.boring_classes import BoringModel

    trainer = pl.Trainer(
        max_steps=4,
        accumulate_grad_batches=2,
        limit_val_batches=2,
        val_check_interval=4,
        num_sanity_val_steps=1,
        callbacks=[StepProgress(every=0)],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(BoringModel())
    trainer.test(BoringModel(), verbose=False)
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("fit: ")][-1].startswith("fit: 4/4 steps")
    assert "Sanity Checking: 1/1 batches" in "\n".join(lines)
    assert sum(line.startswith("Validation: 2/2 batches") for line in lines) == 2
    assert any(line.startswith("Testing: 64/64 batches") for line in lines)
