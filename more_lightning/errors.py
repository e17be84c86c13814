"""The one base class of errors about the user's input or environment, and the config-range check built on it.

Every error whose message says what was wrong and what to do derives from :class:`UserError` (mixed in next to the
built-in class it already was, so ``except ValueError`` keeps working). ``cli.main`` catches it once: one ``error:``
line on stderr, exit code 2, no traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Mapping


class UserError(Exception):
    """An error the user can fix (a bad value, row, file, path or server); its message says what to do."""


class SettingError(UserError, ValueError):
    """A setting that does not fit the others or the data (an objective without its rollout, an unknown format or
    router...): the message names the setting and the fix."""


class ConfigError(UserError, ValueError):
    """Config values out of their valid range, or that do not fit the other sections: the message names every such
    field with its value and what it should be."""

    def __init__(self, problems: list[tuple[str, object, str]]) -> None:
        super().__init__(describe_problems(problems))
        self.problems = problems
        """``(field, value, valid range)`` for each bad value."""


def describe_problems(problems: list[tuple[str, object, str]]) -> str:
    """``field value: expected range``, one problem per line after a header when there are several."""
    lines = [f"{name} {value!r}: expected {valid}" for name, value, valid in problems]
    return lines[0] if len(lines) == 1 else f"{len(lines)} settings to fix:\n" + "\n".join(f"  {x}" for x in lines)


def check_ranges(owner: str, fields: Mapping[str, tuple[object, bool, str]]) -> None:
    """Raise one :class:`ConfigError` for every ``field: (value, ok, valid range)`` that is not ``ok``.

    ``owner`` names the config the fields belong to (``sampling``, ``model.optimizer``...), so the message reads
    ``sampling.temperature 0.0: expected > 0 when sampling (or greedy)``.
    """
    problems = [(f"{owner}.{name}", value, valid) for name, (value, ok, valid) in fields.items() if not ok]
    if problems:
        raise ConfigError(problems)
