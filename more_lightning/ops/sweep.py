"""``python -m more_lightning sweep``: a W&B sweep file run as an Optuna study.

``method: random | grid | bayes`` → Optuna's random, grid and TPE samplers; ``metric`` → the study's direction and
the value each trial reports; ``early_terminate: hyperband`` → Optuna's Hyperband pruner, fed at every training step
by the trial's ``fit`` process (``trial_report.py``). The study lives in an RDB storage (SQLite by default), so a sweep
that is stopped or crashes resumes where it was (finished trials are not repeated; ``count`` is the study's total),
and several workers — on one machine or many, sharing an RDB URL — run trials of one study in parallel. Each trial is
the sweep's ``command`` in a subprocess and stays an offline W&B run (``WANDB_MODE=offline`` unless set; sync it
later). ``optuna-dashboard <storage>`` shows the study in a browser.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from rich.console import Console

from more_lightning.errors import UserError
from more_lightning.ops.sweep_spec import SweepSpec
from more_lightning.ops.trial_report import ENVIRONMENT, LAST_VALUE, PRUNED_AT
from more_lightning.ops.wandb_offline import last_value

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
HEARTBEAT_S, GRACE_S = 30, 120
"""A worker's running trial beats every 30 s; one silent for 120 s (its worker was killed) is marked failed."""


class TrialFailed(UserError, RuntimeError):
    """A trial's command exited with an error (the study records it as failed and goes on)."""


@dataclass
class TrialRow:
    """One row of the leaderboard."""

    number: int
    state: str
    value: float | None
    parameters: dict
    seconds: float | None
    log: str


def _sampler(spec: SweepSpec, seed: int | None) -> optuna.samplers.BaseSampler:
    if spec.method == "grid":
        return optuna.samplers.GridSampler(spec.grid(), seed=seed)
    if spec.method == "bayes":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    rule = spec.early_terminate
    if rule is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.HyperbandPruner(
        min_resource=rule.min_iter, max_resource=rule.max_iter or "auto", reduction_factor=rule.eta
    )


def open_study(spec: SweepSpec, storage: str, study_name: str, seed: int | None = None) -> optuna.Study:
    """Create the study, or load it to resume (its trials of killed workers are marked failed)."""
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.RDBStorage(storage, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    study = optuna.create_study(
        storage=backend,
        study_name=study_name,
        sampler=_sampler(spec, seed),
        pruner=_pruner(spec),
        direction="maximize" if spec.goal == "maximize" else "minimize",
        load_if_exists=True,
    )
    optuna.storages.fail_stale_trials(study)
    if spec.method == "grid":
        _requeue_failed_grid_points(study)
    return study


def _requeue_failed_grid_points(study: optuna.Study) -> None:
    """Optuna's grid sampler counts a failed trial's point as visited; a resumed sweep runs those points again."""
    trials = study.get_trials(deepcopy=False)
    settled = {tuple(sorted(t.params.items())) for t in trials if t.state not in (optuna.trial.TrialState.FAIL,)}
    waiting = {
        tuple(sorted(t.system_attrs.get("fixed_params", {}).items()))
        for t in trials
        if t.state == optuna.trial.TrialState.WAITING
    }
    for trial in trials:
        point = tuple(sorted(trial.params.items()))
        if trial.state == optuna.trial.TrialState.FAIL and point not in settled | waiting:
            study.enqueue_trial(dict(point))
            waiting.add(point)


def _objective(spec: SweepSpec, storage: str, study_name: str, folder: Path, extra_args: list[str]):
    reader = optuna.storages.RDBStorage(storage)  # reads what the trial's own process wrote

    def objective(trial: optuna.Trial) -> float:
        values = spec.suggest(trial)
        run_id = f"{study_name}-{trial.number}"
        env = dict(os.environ, WANDB_RUN_ID=run_id, WANDB_RUN_GROUP=f"sweep-{study_name}")
        env.setdefault("WANDB_MODE", "offline")
        env.update(
            {
                ENVIRONMENT["storage"]: storage,
                ENVIRONMENT["study"]: study_name,
                ENVIRONMENT["trial_id"]: str(trial._trial_id),
                ENVIRONMENT["metric"]: spec.metric,
            }
        )
        log = folder / f"trial-{trial.number}.log"
        trial.set_user_attr("log", str(log))
        trial.set_user_attr("run_id", run_id)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        with log.open("w") as handle:
            result = subprocess.run(spec.arguments(values) + extra_args, env=env, stdout=handle, stderr=handle)
        attributes = reader.get_trial(trial._trial_id).user_attrs
        if PRUNED_AT in attributes:
            raise optuna.TrialPruned(f"pruned at step {attributes[PRUNED_AT]}")
        if result.returncode != 0:
            raise TrialFailed(f"trial {trial.number} exited with {result.returncode}; see {log}")
        value = attributes.get(LAST_VALUE)
        if value is None:  # a command without the reporter (not `fit`): the metric from its offline W&B run
            found = sorted(Path.cwd().rglob(f"run-{run_id}.wandb"))
            value = last_value(found[-1], spec.metric) if found else None
        if value is None:
            raise TrialFailed(f"trial {trial.number} logged no {spec.metric!r}; see {log}")
        return value

    return objective


def run_sweep(
    spec: SweepSpec,
    count: int,
    storage: str,
    study_name: str,
    seed: int | None = None,
    output_dir: str = "sweeps",
    extra_args: list[str] | None = None,
) -> optuna.Study:
    """Run trials until the study holds ``count`` finished (complete or pruned) trials, or the grid is done."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    study = open_study(spec, storage, study_name, seed)
    remaining = count - len(study.get_trials(deepcopy=False, states=FINISHED))
    if remaining > 0:
        study.optimize(
            _objective(spec, storage, study_name, folder, list(extra_args or [])),
            n_trials=remaining,
            callbacks=[optuna.study.MaxTrialsCallback(count, states=FINISHED)],
            catch=(TrialFailed,),
        )
    return study


def leaderboard(study: optuna.Study) -> list[TrialRow]:
    """The study's trials, best first (complete, then pruned, then the rest)."""
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    order = {optuna.trial.TrialState.COMPLETE: 0, optuna.trial.TrialState.PRUNED: 1}
    rows = [
        TrialRow(
            t.number,
            t.state.name.lower(),
            t.value,
            t.params,
            t.duration.total_seconds() if t.duration else None,
            t.user_attrs.get("log", ""),
        )
        for t in study.get_trials(deepcopy=False)
    ]
    return sorted(rows, key=lambda r: (order.get(optuna.trial.TrialState[r.state.upper()], 2), sign * (r.value or 0)))


def write_leaderboard(rows: list[TrialRow], path: Path) -> None:
    path.write_text(json.dumps([asdict(r) for r in rows], indent=2))


def sweep(
    sweep_file: str,
    count: int = 3,
    storage: str = "sqlite:///sweeps/study.db",
    study_name: str | None = None,
    seed: int | None = None,
    output_dir: str = "sweeps",
    extra_args: list[str] | None = None,
) -> int:
    """Run a W&B sweep file as an Optuna study (random, grid, TPE; Hyperband pruning); resumable, parallel workers.

    Args:
        sweep_file: the sweep YAML (the same file ``wandb sweep`` takes), e.g. ``configs/sweep.yaml``.
        count: finished trials the study should hold (a resumed study runs only the rest; grid: at most its size).
        storage: the study's RDB URL; several workers sharing it run trials of one study in parallel.
        study_name: the study in ``storage`` (default: the sweep file's name).
        seed: sampler seed (reproducible with one worker; leave unset when several workers share the study).
        output_dir: trial logs and ``leaderboard.json``.
        extra_args: appended to every trial's command, e.g. ``["--trainer.max_steps=50"]``.
    """
    from rich.table import Table

    spec = SweepSpec.load(sweep_file)
    name = study_name or Path(sweep_file).stem
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))  # the running trial fails
    study = run_sweep(spec, count, storage, name, seed, output_dir, extra_args)
    rows = leaderboard(study)
    write_leaderboard(rows, Path(output_dir) / "leaderboard.json")
    table = Table(title=f"study {name!r} in {storage}: {spec.metric} ({spec.goal})")
    for column in ("rank", "trial", "state", spec.metric, "seconds", *spec.parameters):
        table.add_column(column)
    for rank, row in enumerate(rows, start=1):
        value = f"{row.value:.4f}" if row.value is not None else f"- ({row.log})"
        values = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.parameters.values()]
        seconds = f"{row.seconds:.0f}" if row.seconds is not None else "-"
        table.add_row(str(rank), str(row.number), row.state, value, seconds, *values)
    Console().print(table)
    best = rows[0] if rows and rows[0].value is not None else None
    if best is not None:
        print(f"best: trial {best.number} {spec.metric}={best.value:.4f} {json.dumps(best.parameters)}")
    print(
        f"Wrote {output_dir}/leaderboard.json. Dashboard: optuna-dashboard {storage}; "
        "sync the offline W&B runs with `wandb sync <run folder>`"
    )
    return 0 if best is not None else 1
