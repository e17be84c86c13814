"""A W&B sweep file (the same YAML ``wandb sweep`` takes), read for an Optuna study.

Supported: ``method`` (``random``, ``grid``, ``bayes``), ``metric`` (``name``, ``goal``), ``parameters`` (``value``,
``values``, or ``distribution`` with ``min``/``max``: ``uniform``, ``int_uniform``, ``log_uniform_values``,
``log_uniform``, ``categorical``, ``constant``), ``early_terminate`` (``type: hyperband`` with ``min_iter``,
``max_iter``, ``eta``), ``command`` with W&B's macros (``${env}``, ``${interpreter}``, ``${program}``, ``${args}``,
``${args_no_hyphens}``), ``program``, and the descriptive keys ``name``, ``description``, ``project``, ``entity``.
Anything else is an error that names the key: a sweep that silently ignores a setting would not be the sweep asked for.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from more_lightning.errors import UserError

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
TOP_LEVEL_KEYS = {
    "program",
    "method",
    "metric",
    "parameters",
    "command",
    "early_terminate",
    "name",
    "description",
    "project",
    "entity",
}
PARAMETER_KEYS = {"value", "values", "distribution", "min", "max"}
DISTRIBUTIONS = ("uniform", "int_uniform", "log_uniform_values", "log_uniform", "categorical", "constant")


class SweepError(UserError, ValueError):
    """A sweep file this engine cannot run, with what to change."""


@dataclass(frozen=True)
class EarlyTerminate:
    """W&B's ``early_terminate: {type: hyperband, ...}``, run as Optuna's Hyperband pruner over logged steps."""

    min_iter: int = 1
    max_iter: int | None = None
    eta: int = 3


@dataclass
class SweepSpec:
    """A parsed sweep file."""

    method: str
    metric: str
    goal: str
    parameters: dict[str, dict]
    command: list[str] = field(default_factory=lambda: list(DEFAULT_COMMAND))
    program: str = ""
    early_terminate: EarlyTerminate | None = None

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as error:
            raise SweepError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(raw, dict):
            raise SweepError(f"{path}: expected a mapping with method, metric, parameters")
        if unknown := sorted(set(raw) - TOP_LEVEL_KEYS):
            raise SweepError(f"{path}: unsupported key(s) {unknown}; supported: {sorted(TOP_LEVEL_KEYS)}")
        method = raw.get("method", "random")
        if method not in ("random", "grid", "bayes"):
            raise SweepError(f"{path}: method {method!r}; use random, grid or bayes")
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
            method,
            metric["name"],
            goal,
            parameters,
            raw.get("command", list(DEFAULT_COMMAND)),
            raw.get("program", ""),
            _early_terminate(path, raw.get("early_terminate")),
        )

    def grid(self) -> dict[str, list]:
        """The search space of ``method: grid`` (every parameter discrete)."""
        return {name: _discrete_values(spec) for name, spec in self.parameters.items()}

    def suggest(self, trial) -> dict:
        """The parameter values of an Optuna trial, drawn from the file's distributions."""
        return {name: _suggest(trial, name, spec) for name, spec in self.parameters.items()}

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


def _early_terminate(path, raw) -> EarlyTerminate | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("type") != "hyperband":
        raise SweepError(f"{path}: early_terminate must be {{type: hyperband, min_iter, max_iter, eta}}")
    if unknown := sorted(set(raw) - {"type", "min_iter", "max_iter", "eta"}):
        raise SweepError(f"{path}: early_terminate: unsupported key(s) {unknown} (use min_iter, max_iter, eta)")
    return EarlyTerminate(int(raw.get("min_iter", 1)), raw.get("max_iter"), int(raw.get("eta", 3)))


def _check_parameter(path, name: str, spec, method: str) -> None:
    if not isinstance(spec, dict) or not ({"value", "values"} & set(spec) or {"min", "max"} <= set(spec)):
        raise SweepError(f"{path}: parameter {name!r} needs value, values, or min and max")
    if unknown := sorted(set(spec) - PARAMETER_KEYS):
        raise SweepError(f"{path}: parameter {name!r}: unsupported key(s) {unknown}")
    distribution = spec.get("distribution")
    if distribution is not None and distribution not in DISTRIBUTIONS:
        raise SweepError(f"{path}: parameter {name!r}: distribution {distribution!r}; supported: {DISTRIBUTIONS}")
    if method == "grid" and "value" not in spec and "values" not in spec:
        raise SweepError(f"{path}: grid search needs discrete parameters; {name!r} has a range")
    for choice in spec.get("values", []):
        if not isinstance(choice, (str, int, float, bool)) and choice is not None:
            raise SweepError(f"{path}: parameter {name!r}: values must be numbers, strings or booleans")


def _discrete_values(spec: dict) -> list:
    return [spec["value"]] if "value" in spec else list(spec["values"])


def _suggest(trial, name: str, spec: dict):
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return trial.suggest_categorical(name, spec["values"])
    low, high = spec["min"], spec["max"]
    integers = isinstance(low, int) and isinstance(high, int)
    distribution = spec.get("distribution") or ("int_uniform" if integers else "uniform")
    if distribution == "int_uniform":
        return trial.suggest_int(name, low, high)
    if distribution == "log_uniform_values":
        return trial.suggest_float(name, low, high, log=True)
    if distribution == "log_uniform":  # W&B: min and max are natural-log exponents
        return trial.suggest_float(name, math.exp(low), math.exp(high), log=True)
    return trial.suggest_float(name, float(low), float(high))


def _format(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)
