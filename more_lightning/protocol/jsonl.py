"""Reading JSONL files row by row, with bad rows reported by file, line and field.

A row parser raises :class:`RowError` (field + message). :func:`read_jsonl_rows` then either fails with a
:class:`BadRowError` (``on_error="raise"``) or skips the row, counts it in the :class:`ReadReport` and logs it
(``on_error="skip"``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from more_lightning.errors import SettingError, UserError

log = logging.getLogger(__name__)

OnError = Literal["skip", "raise"]
T = TypeVar("T")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".PNG", ".webp")


class RowError(ValueError):
    """What is wrong with one row: the field and a message."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class BadRow:
    """One row that could not be read."""

    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: field '{self.field}': {self.message}"


class BadRowError(UserError, ValueError):
    """A bad row, raised when the reader is told to fail on bad input."""

    def __init__(self, bad: BadRow) -> None:
        super().__init__(f"{bad} (set on_error='skip' to skip such rows)")
        self.bad = bad


class DataFileNotFound(UserError, FileNotFoundError):
    """A data file (trajectories, questions, corpus) that is not there."""


@dataclass
class ReadReport:
    """How reading one file went."""

    path: str
    rows_read: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)

    @property
    def rows_skipped(self) -> int:
        return len(self.bad_rows)


def describe_reads(header: str, reports: list[ReadReport]) -> str:
    """``header``, then each file with its rows read and skipped and its first bad rows (why a run has no data)."""
    lines = [header]
    for report in reports:
        lines.append(f"  {report.path}: {report.rows_read} rows read, {report.rows_skipped} skipped")
        lines += [f"    {bad}" for bad in report.bad_rows[:3]]
    if not any(r.bad_rows for r in reports):
        lines.append("  (the files hold no rows)")
    return "\n".join(lines)


class ReadResult(list, Generic[T]):
    """The records read from a file (a list), with its :class:`ReadReport` as ``.report``."""

    def __init__(self, items: list[T], report: ReadReport) -> None:
        super().__init__(items)
        self.report = report


def read_jsonl_rows(
    path: str | os.PathLike, parse_row: Callable[[dict, int], T], on_error: OnError = "skip"
) -> ReadResult[T]:
    """Parse every non-empty line of ``path`` with ``parse_row(obj, line_number)``."""
    if on_error not in ("skip", "raise"):
        raise SettingError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
    path = str(path)
    report = ReadReport(path)
    items: list[T] = []
    if not os.path.isfile(path):
        reason = "a directory, not a file" if os.path.isdir(path) else "no such file"
        raise DataFileNotFound(f"{path}: {reason} (relative paths are read from {os.getcwd()})")
    with open(path, "rb") as handle:  # decoded line by line: a bad byte is a bad row, not the end of the file
        for line_number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise RowError("<row>", f"expected a JSON object, got {type(obj).__name__}")
                items.append(parse_row(obj, line_number))
            except UnicodeDecodeError as error:
                bad = BadRow(path, line_number, "<row>", f"not UTF-8 (byte {raw[error.start]:#04x} at {error.start})")
            except json.JSONDecodeError as error:
                bad = BadRow(path, line_number, "<row>", f"invalid JSON ({error.msg} at column {error.colno})")
            except RowError as error:
                bad = BadRow(path, line_number, error.field, error.message)
            else:
                continue
            if on_error == "raise":
                raise BadRowError(bad)
            report.bad_rows.append(bad)
            log.warning("skipping bad row: %s", bad)
    report.rows_read = len(items)
    if report.bad_rows:
        log.warning("%s: read %d rows, skipped %d bad rows", path, report.rows_read, report.rows_skipped)
    return ReadResult(items, report)


def require(obj: dict, name: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    """``obj[name]``, checked to be of ``kind``; raises :class:`RowError` naming the field otherwise."""
    field_name = f"{where}{name}"
    if name not in obj:
        raise RowError(field_name, "missing")
    value = obj[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise RowError(field_name, f"expected {expected}, got {type(value).__name__}")
    return value


def string_list(value: Any, field_name: str) -> tuple[str, ...]:
    """A non-empty list of strings (or one string) as a tuple; :class:`RowError` otherwise."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RowError(field_name, "expected a string or a non-empty list of strings")
    return tuple(value)


def answer_list(value: Any, field_name: str) -> tuple[str, ...]:
    """Gold answers: a string, or a non-empty list of strings and numbers (Dyn-VQA has ``[1, "one"]``), as strings."""
    if isinstance(value, str):
        return (value,)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise RowError(field_name, "expected a string or a non-empty list of strings/numbers")
    return tuple(v if isinstance(v, str) else str(v) for v in value)


def find_image(
    path_or_id: str, folder: str | os.PathLike | None, relative_to: str | os.PathLike | None = None
) -> Path | None:
    """Resolve an image: an existing path as is; a relative path against ``relative_to`` (the data file's folder);
    else ``folder/<name>`` (the usual suffixes tried); else None."""
    candidate = Path(path_or_id)
    if candidate.is_file():
        return candidate
    if relative_to is not None and not candidate.is_absolute() and (Path(relative_to) / candidate).is_file():
        return Path(relative_to) / candidate
    if folder is not None:
        folder = Path(folder)
        for name in (candidate.name, *(candidate.name + s for s in IMAGE_SUFFIXES)):
            if (folder / name).is_file():
                return folder / name
    return None
