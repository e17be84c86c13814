"""``python -m more_lightning sweep``: run a W&B sweep file on this machine, with no W&B server.

The same ``configs/sweep.yaml`` works with ``wandb sweep`` + ``wandb agent`` (a W&B account) and here (clusters
without internet): ``method`` random or grid, ``metric`` (name, goal), ``parameters`` (``value``, ``values``,
``distribution`` with ``min``/``max``: ``uniform``, ``int_uniform``, ``log_uniform_values``, ``log_uniform``,
``categorical``, ``constant``) and ``command`` (W&B's macros ``${env}``, ``${interpreter}``, ``${program}``,
``${args}``, ``${args_no_hyphens}``). Each trial runs the command as a subprocess with ``WANDB_MODE=offline`` (unless
set) and its own run id, so its run can be synced later; its score is the last logged value of the metric, read from
the offline run file. A leaderboard is printed and written to ``{output_dir}/leaderboard.json``.

W&B's own open-source engine (the ``sweeps`` package) pins ``numpy<2``, which this stack cannot install, hence this
small engine; Bayesian search needs W&B's server.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from more_lightning.wandb_offline import last_value

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]


class SweepError(ValueError):
    """A sweep file this engine cannot run, with what to change."""


@dataclass
class Trial:
    """One set of parameter values, its run and its score."""

    index: int
    parameters: dict
    run_id: str
    score: float | None = None
    returncode: int | None = None
    seconds: float = 0.0
    log: str = ""


@dataclass
class SweepSpec:
    """A parsed sweep file."""

    method: str
    metric: str
    goal: str
    parameters: dict[str, dict]
    command: list[str] = field(default_factory=lambda: list(DEFAULT_COMMAND))
    program: str = ""

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        raw = yaml.safe_load(Path(path).read_text())
        if not isinstance(raw, dict):
            raise SweepError(f"{path}: expected a mapping with method, metric, parameters")
        method = raw.get("method", "random")
        if method not in ("random", "grid"):
            raise SweepError(f"{path}: method {method!r} runs only on W&B's server; locally use random or grid")
        metric = raw.get("metric") or {}
        if "name" not in metric:
            raise SweepError(f"{path}: metric.name is required (the logged value to rank trials by)")
        goal = metric.get("goal", "minimize")
        if goal not in ("minimize", "maximize"):
            raise SweepError(f"{path}: metric.goal must be minimize or maximize, not {goal!r}")
        parameters = raw.get("parameters")
        if not isinstance(parameters, dict) or not parameters:
            raise SweepError(f"{path}: parameters is empty")
        for name, spec in parameters.items():
            _check_parameter(path, name, spec, method)
        return cls(
            method, metric["name"], goal, parameters, raw.get("command", list(DEFAULT_COMMAND)), raw.get("program", "")
        )

    def trials(self, count: int, seed: int = 0) -> list[dict]:
        """Parameter values of up to ``count`` trials (grid: the first ``count`` points of the grid)."""
        if self.method == "grid":
            names = list(self.parameters)
            choices = [_discrete_values(self.parameters[n]) for n in names]
            points = itertools.islice(itertools.product(*choices), count)
            return [dict(zip(names, point, strict=True)) for point in points]
        rng = random.Random(seed)
        return [{name: _sample(spec, rng) for name, spec in self.parameters.items()} for _ in range(count)]

    def arguments(self, values: dict) -> list[str]:
        """The trial's command line, W&B macros expanded."""
        out = []
        for part in self.command:
            if part == "${env}":
                continue
            if part == "${interpreter}":
                out.append(sys.executable)
            elif part == "${program}":
                if self.program:
                    out.append(self.program)
            elif part == "${args}":
                out += [f"--{name}={_format(value)}" for name, value in values.items()]
            elif part == "${args_no_hyphens}":
                out += [f"{name}={_format(value)}" for name, value in values.items()]
            else:
                out.append(part)
        return out


def _check_parameter(path, name: str, spec, method: str) -> None:
    if not isinstance(spec, dict) or not ({"value", "values"} & set(spec) or {"min", "max"} <= set(spec)):
        raise SweepError(f"{path}: parameter {name!r} needs value, values, or min and max")
    distribution = spec.get("distribution")
    known = ("uniform", "int_uniform", "log_uniform_values", "log_uniform", "categorical", "constant", None)
    if distribution not in known:
        raise SweepError(f"{path}: parameter {name!r}: distribution {distribution!r} is not supported locally")
    if method == "grid" and "value" not in spec and "values" not in spec:
        raise SweepError(f"{path}: grid search needs discrete parameters; {name!r} has a range")


def _discrete_values(spec: dict) -> list:
    return [spec["value"]] if "value" in spec else list(spec["values"])


def _sample(spec: dict, rng: random.Random):
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    low, high = spec["min"], spec["max"]
    integers = isinstance(low, int) and isinstance(high, int)
    distribution = spec.get("distribution") or ("int_uniform" if integers else "uniform")
    if distribution == "int_uniform":
        return rng.randint(low, high)
    if distribution == "log_uniform_values":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    if distribution == "log_uniform":
        return math.exp(rng.uniform(low, high))
    return rng.uniform(low, high)


def _format(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


def _run_file(run_id: str, root: Path) -> Path | None:
    found = sorted(root.rglob(f"run-{run_id}.wandb"))
    return found[-1] if found else None


def run_sweep(
    spec: SweepSpec, count: int, seed: int = 0, output_dir: str = "sweeps", extra_args: list[str] | None = None
) -> list[Trial]:
    """Run ``count`` trials one after another; returns them ranked best first (failed trials last)."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    sweep_id = uuid.uuid4().hex[:8]
    trials = []
    for index, values in enumerate(spec.trials(count, seed)):
        trial = Trial(index, values, f"{sweep_id}-{index}")
        env = dict(os.environ, WANDB_RUN_ID=trial.run_id, WANDB_RUN_GROUP=f"sweep-{sweep_id}")
        env.setdefault("WANDB_MODE", "offline")
        began = time.monotonic()
        command = spec.arguments(values) + list(extra_args or [])
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        trial.seconds, trial.returncode = time.monotonic() - began, result.returncode
        log = folder / f"trial-{trial.run_id}.log"
        log.write_text(result.stdout + result.stderr)
        trial.log = str(log)
        run_file = _run_file(trial.run_id, Path.cwd())
        trial.score = last_value(run_file, spec.metric) if run_file and result.returncode == 0 else None
        trials.append(trial)
    sign = -1 if spec.goal == "maximize" else 1
    ranked = sorted(trials, key=lambda t: (t.score is None, sign * (t.score or 0.0)))
    (folder / "leaderboard.json").write_text(json.dumps([t.__dict__ for t in ranked], indent=2))
    return ranked
