"""The six QA evaluation formats of MoRE, read into :class:`QAExample` with the golds the metric uses.

| format | row | golds |
|---|---|---|
| ``2wiki``, ``openwikitqa``, ``tabfact`` | ``{question, answer: str}`` | ``[answer]`` |
| ``infoseek`` | ``{data_id, image_id, question, answer[], answer_eval[]}`` | ``answer_eval`` with ranges expanded |
| ``dynvqa`` | ``{question_id, question, answer[], image_id, gloden_query?}`` | ``answer`` |
| ``webqa`` | ``{question, answer[], image_id}`` | ``answer`` |

Images are files named by ``image_id`` in ``image_folder`` (``.jpg``/``.png``/… tried). Two optional fields, any
format (our extension, e.g. the demo's questions):

- ``expert``: the gold expert; the episode then has a single-hop teacher step (ask the question, route it there);
- ``hops``: a question that needs several experts in turn, as ``[{"question": sub-question, "answer": sub-answer,
  "expert": gold expert}, …]``, one entry per hop: the episode's teacher is one sub-step per hop
  (``episode.teacher[k].experts[0]`` is step k's gold expert) and its gold expert is the first hop's. A row giving
  both ``expert`` and ``hops`` must name the same first expert.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

from more_lightning.errors import SettingError
from more_lightning.protocol.images import image_problem
from more_lightning.protocol.jsonl import (
    OnError,
    ReadResult,
    RowError,
    answer_list,
    find_image,
    read_jsonl_rows,
    require,
)
from more_lightning.protocol.records import Episode, SubStep
from more_lightning.rewards.metric import expand_infoseek_golds


@dataclass(frozen=True)
class QAHop:
    """One hop of a question that needs several experts in turn (the optional ``hops`` field)."""

    question: str
    """The hop's sub-question."""
    answer: str
    """The hop's sub-answer."""
    expert: str
    """The expert that holds it."""


@dataclass(frozen=True)
class QAExample:
    """One evaluation question."""

    id: str
    dataset: str
    question: str
    golds: tuple[str, ...]
    """The gold answers exactly as the F1-Recall metric compares them."""
    image: str | None = None
    """The image file, for visual questions."""
    gold_query: str | None = None
    """A rewritten, self-contained question where the dataset gives one (Dyn-VQA)."""
    expert: str | None = None
    """The expert that holds the answer (of the first hop), where the row names one (``expert`` or ``hops``)."""
    hops: tuple[QAHop, ...] = ()
    """The hops of a question that needs several experts in turn (an optional ``hops`` field, any format)."""

    def to_episode(self) -> Episode:
        """The question as an episode. Its teacher: one sub-step per hop with ``hops``; otherwise, with a gold
        ``expert``, a single hop: ask the question, route it there, answer."""
        teacher = None
        if self.hops:
            teacher = [SubStep(hop.question, hop.answer, (hop.expert,)) for hop in self.hops]
        elif self.expert and self.golds:
            teacher = [SubStep(self.gold_query or self.question, self.golds[0], (self.expert,))]
        return Episode(self.id, self.question, self.image, self.golds, self.dataset, teacher, self.expert)


def _hops(value: object) -> tuple[QAHop, ...]:
    """The ``hops`` field: a non-empty list of ``{question, answer, expert}`` objects of non-empty strings."""
    shape = 'expected a non-empty list of {"question", "answer", "expert"} objects (one per hop)'
    if not isinstance(value, list) or not value:
        raise RowError("hops", shape)
    hops = []
    for i, hop in enumerate(value):
        if not isinstance(hop, dict):
            raise RowError(f"hops[{i}]", shape)
        for name in ("question", "answer", "expert"):
            if not (isinstance(hop.get(name), str) and hop[name].strip()):
                raise RowError(f"hops[{i}].{name}", "missing or not a non-empty string")
        hops.append(QAHop(hop["question"], hop["answer"], hop["expert"]))
    return tuple(hops)


def _single_answer(row: dict, line: int, dataset: str) -> dict:
    return {"id": f"{dataset}-{line}", "golds": (require(row, "answer", str),)}


def _infoseek(row: dict, line: int, dataset: str) -> dict:
    answer_eval = require(row, "answer_eval", list)
    for i, item in enumerate(answer_eval):
        if isinstance(item, dict):
            bounds = item.get("range")
            if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds)):
                raise RowError(f"answer_eval[{i}].range", "expected [low, high] numbers")
        elif not isinstance(item, str):
            raise RowError(f"answer_eval[{i}]", "expected a string or {range: [low, high]}")
    if not answer_eval:
        raise RowError("answer_eval", "empty")
    return {
        "id": require(row, "data_id", str),
        "golds": tuple(expand_infoseek_golds(answer_eval)),
        "image_id": require(row, "image_id", str),
    }


def _dynvqa(row: dict, line: int, dataset: str) -> dict:
    query = row.get("gloden_query")
    return {
        "id": str(require(row, "question_id", (str, int))),
        "golds": answer_list(row.get("answer"), "answer"),
        "image_id": str(require(row, "image_id", (str, int))),
        "gold_query": query if isinstance(query, str) else None,
    }


def _webqa(row: dict, line: int, dataset: str) -> dict:
    return {
        "id": f"{dataset}-{line}",
        "golds": answer_list(row.get("answer"), "answer"),
        "image_id": str(require(row, "image_id", (str, int))),
    }


QA_FORMATS: dict[str, Callable[[dict, int, str], dict]] = {
    "2wiki": _single_answer,
    "openwikitqa": _single_answer,
    "tabfact": _single_answer,
    "infoseek": _infoseek,
    "dynvqa": _dynvqa,
    "webqa": _webqa,
}
"""Format name → the function reading a row's id, golds and image id."""


def read_qa_jsonl(
    path: str | os.PathLike,
    format: str,
    image_folder: str | os.PathLike | None = None,
    on_error: OnError = "skip",
    check_images: bool = True,
    dataset: str | None = None,
) -> ReadResult[QAExample]:
    """Read a QA file of one of :data:`QA_FORMATS`.

    Args:
        path: the JSONL file.
        format: one of ``2wiki``, ``openwikitqa``, ``tabfact``, ``infoseek``, ``dynvqa``, ``webqa``.
        image_folder: where image files are; ``None`` keeps image ids unresolved (no check).
        on_error: ``skip`` bad rows (counted in ``result.report``) or ``raise``.
        check_images: with an ``image_folder``, treat a row whose image is missing as bad.
        dataset: the name scores are reported under (default: ``format``).
    """
    if format not in QA_FORMATS:
        raise SettingError(f"unknown QA format {format!r}; known: {', '.join(QA_FORMATS)}")
    name = dataset or format
    read_fields = QA_FORMATS[format]

    def parse(row: dict, line: int) -> QAExample:
        question = require(row, "question", str)
        fields = read_fields(row, line, name)
        image = None
        expert = row.get("expert")
        if expert is not None and not (isinstance(expert, str) and expert.strip()):
            raise RowError("expert", "expected the name of an expert")
        hops = _hops(row["hops"]) if row.get("hops") is not None else ()
        if hops and expert is not None and expert != hops[0].expert:
            raise RowError("expert", f"{expert!r} is not the first hop's expert {hops[0].expert!r}")
        expert = hops[0].expert if hops else expert
        image_id = fields.pop("image_id", None)
        if image_id is not None and image_folder is not None:
            found = find_image(image_id, image_folder)
            if found is None and check_images:
                raise RowError("image_id", f"no image file for {image_id!r} in {image_folder}")
            if found is not None and check_images and (problem := image_problem(found)):
                raise RowError("image_id", f"image {found}: {problem}")
            image = str(found) if found else None
        return QAExample(dataset=name, question=question, image=image, expert=expert, hops=hops, **fields)

    return read_jsonl_rows(path, parse, on_error)


@dataclass
class QASource:
    """One QA evaluation file."""

    path: str
    """The JSONL file."""
    format: str
    """``2wiki``, ``openwikitqa``, ``tabfact``, ``infoseek``, ``dynvqa`` or ``webqa``."""
    image_folder: str | None = None
    """Where the images are (visual datasets)."""
    dataset: str | None = None
    """The name to report scores under (default: the format)."""
    limit: int | None = None
    """Use only the first ``limit`` questions."""

    def read(self) -> ReadResult[QAExample]:
        """The questions (the first ``limit``), with the file's :class:`ReadReport` (rows read, bad rows)."""
        examples = read_qa_jsonl(self.path, self.format, self.image_folder, dataset=self.dataset)
        return ReadResult(list(examples[: self.limit] if self.limit else examples), examples.report)


def _reader(format: str) -> Callable[..., ReadResult[QAExample]]:
    reader = functools.partial(read_qa_jsonl, format=format)
    reader.__doc__ = f"Read a {format} QA file (see :func:`read_qa_jsonl`)."
    return reader


read_2wikimultihopqa = _reader("2wiki")
read_openwikitqa = _reader("openwikitqa")
read_tabfact = _reader("tabfact")
read_infoseek = _reader("infoseek")
read_dynvqa = _reader("dynvqa")
read_webqa = _reader("webqa")
