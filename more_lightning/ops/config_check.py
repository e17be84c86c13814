"""Every out-of-range value of a parsed config, gathered into one message before anything is instantiated.

The config dataclasses (``SamplingConfig``, ``LoraSettings``, ``OptimizerConfig``...) and ``RolloutCallback`` check
their ranges when built (:func:`more_lightning.errors.check_ranges`). Built by LightningCLI, the first bad one would
stop the run, and one inside an optional field (``policy.lora``, ``model.rollout``) would come wrapped in
jsonargparse's "Does not validate against any of the Union subtypes". :func:`config_problems` builds each of them
from the parsed values first, in a dry run, and returns every problem with its full path.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Mapping

from more_lightning.errors import ConfigError


def _dataclass_of(annotation) -> type | None:
    """The dataclass an annotation names (``D`` or ``D | None``), if any."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def class_from_path(class_path: str) -> type:
    """The class a config's ``class_path`` names."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _plain(value):
    return {k: _plain(v) for k, v in value.items()} if isinstance(value, Mapping) else value


def _build(make, values: Mapping, path: str) -> list[tuple[str, object, str]]:
    """Build ``make(**values)`` to run its range checks; its problems, each field named under ``path``."""
    try:
        make(**values)
    except ConfigError as error:
        return [(f"{path}.{name.rpartition('.')[2]}", value, valid) for name, value, valid in error.problems]
    return []


def config_problems(
    values: Mapping, owner, path: str = "", checked_classes: tuple[type, ...] = ()
) -> list[tuple[str, object, str]]:
    """Problems of ``values``, the parsed arguments of ``owner`` (a class's ``__init__`` or a function) at ``path``:
    every nested dataclass is built, and ``owner`` and every ``class_path`` entry that is one of ``checked_classes``
    (cheap to build)."""
    is_class = isinstance(owner, type)
    hints = typing.get_type_hints(owner.__init__ if is_class else owner)
    problems = []
    for name, value in values.items():
        if not isinstance(value, Mapping):
            continue
        where = f"{path}.{name}" if path else name
        if "class_path" in value:
            cls = class_from_path(value["class_path"])
            problems += config_problems(
                _plain(value.get("init_args") or {}), cls, f"{where}.init_args", checked_classes
            )
        elif (dataclass := _dataclass_of(hints.get(name))) is not None:
            problems += config_problems(value, dataclass, where, ())
            fields = {f.name for f in dataclasses.fields(dataclass)}
            problems += _build(dataclass, {k: v for k, v in _plain(value).items() if k in fields}, where)
    if is_class and issubclass(owner, checked_classes):
        problems += _build(owner, _with_dataclasses(values, hints), path)
    return problems


def _with_dataclasses(values: Mapping, hints: dict) -> dict:
    """``values`` with each nested dataclass section built as the class receives it (a section that cannot be built
    is left to its default: its own problems are already gathered)."""
    built = {}
    for name, value in values.items():
        dataclass = _dataclass_of(hints.get(name))
        if dataclass is None or not isinstance(value, Mapping):
            built[name] = value
            continue
        fields = {f.name for f in dataclasses.fields(dataclass)}
        try:
            built[name] = dataclass(**{k: v for k, v in _plain(value).items() if k in fields})
        except (ConfigError, TypeError, ValueError):
            continue
    return built
