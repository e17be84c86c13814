"""The official MoRE Step-GRPO trajectory files (JSONL), read into typed records.

One row: ``{"images": [path]?, "steps": [{"step_type": "ret"|"ans", "system": str, "problem": str,
"answer": {"query": str, "retriever": [str]} (ret) or [str] / str (ans)}]}``. ``problem`` marks each image with
``<image>``. A relative image path is taken relative to the file's folder. The official files hold absolute image
paths from the authors' machines: give ``image_root`` and an image that is not at its path is looked up there by
file name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from more_lightning.protocol.demonstrations import answer_demonstration, routing_demonstration
from more_lightning.protocol.jsonl import (
    OnError,
    ReadResult,
    RowError,
    find_image,
    read_jsonl_rows,
    require,
    string_list,
)
from more_lightning.protocol.records import IMAGE_MARKER, Episode, RoutingGold, StepPrompt, StepType, SubStep

ORIGIN_QUESTION = re.compile(r"Origin question: (.*?)\n", re.DOTALL)


@dataclass(frozen=True)
class TeacherStep:
    """One step of a teacher trajectory: its prompt and its gold."""

    prompt: StepPrompt
    gold: RoutingGold | tuple[str, ...]
    """A :class:`RoutingGold` for ``ret`` steps; the gold answers for ``ans`` steps."""

    @property
    def step_type(self) -> StepType:
        return self.prompt.step_type


@dataclass(frozen=True)
class Trajectory:
    """A teacher trajectory: the steps of one question, each its own Step-GRPO prompt."""

    steps: tuple[TeacherStep, ...]
    images: tuple[str, ...]
    source: str
    """``file:line`` it was read from."""


def teacher_demonstration(step: TeacherStep) -> str:
    """The teacher's gold for ``step`` written as a policy output."""
    if isinstance(step.gold, RoutingGold):
        return routing_demonstration(step.gold.query, step.gold.experts)
    return answer_demonstration(step.gold[0] if step.gold else "")


def _parse_step(raw: object, index: int, images: tuple[str, ...]) -> TeacherStep:
    where = f"steps[{index}]."
    if not isinstance(raw, dict):
        raise RowError(f"steps[{index}]", "expected an object")
    step_type = require(raw, "step_type", str, where)
    if step_type not in ("ret", "ans"):
        raise RowError(f"{where}step_type", f"expected 'ret' or 'ans', got {step_type!r}")
    system = require(raw, "system", str, where)
    problem = require(raw, "problem", str, where)
    markers = problem.count(IMAGE_MARKER)
    if markers > len(images):
        raise RowError(f"{where}problem", f"{markers} <image> marker(s) but the row has {len(images)} image(s)")
    if step_type == "ret":
        answer = require(raw, "answer", dict, where)
        query = require(answer, "query", str, f"{where}answer.")
        experts = string_list(answer.get("retriever"), f"{where}answer.retriever")
        gold: RoutingGold | tuple[str, ...] = RoutingGold(query, tuple(e.strip().lower() for e in experts))
    else:
        gold = string_list(raw.get("answer"), f"{where}answer")
    return TeacherStep(StepPrompt(step_type, system, problem, images[:markers]), gold)


def read_step_grpo_jsonl(
    path: str | os.PathLike,
    on_error: OnError = "skip",
    image_root: str | os.PathLike | None = None,
    check_images: bool = True,
) -> ReadResult[Trajectory]:
    """Read an official Step-GRPO JSONL file.

    Args:
        path: the file.
        on_error: ``skip`` bad rows (counted in ``result.report`` and logged) or ``raise`` on the first.
        image_root: where to look for images by file name when a row's path does not exist.
        check_images: treat a row whose image file is missing as bad.
    """

    def parse(row: dict, line: int) -> Trajectory:
        raw_images = row.get("images") or []
        if not isinstance(raw_images, list) or not all(isinstance(p, str) for p in raw_images):
            raise RowError("images", "expected a list of paths")
        images = []
        for i, image in enumerate(raw_images):
            found = find_image(image, image_root, relative_to=os.path.dirname(os.fspath(path)))
            if found is None and check_images:
                raise RowError(
                    f"images[{i}]",
                    f"image file not found: {image}" + (f" (also looked in {image_root})" if image_root else ""),
                )
            images.append(str(found or image))
        steps = require(row, "steps", list)
        if not steps:
            raise RowError("steps", "empty")
        parsed = tuple(_parse_step(step, i, tuple(images)) for i, step in enumerate(steps))
        if ORIGIN_QUESTION.search(parsed[0].prompt.problem) is None:  # on-policy episodes start from it
            raise RowError("steps[0].problem", "no 'Origin question: …' line (the first step must route a question)")
        return Trajectory(parsed, tuple(images), f"{path}:{line}")

    return read_jsonl_rows(path, parse, on_error)


def episode_from_trajectory(trajectory: Trajectory) -> Episode:
    """The question, image, final golds and teacher sub-steps of a teacher trajectory (for on-policy rollouts)."""
    first = trajectory.steps[0].prompt.problem
    match = ORIGIN_QUESTION.search(first)
    if match is None:
        raise ValueError(f"{trajectory.source}: the first step has no 'Origin question:' line")
    teacher: list[SubStep] = []
    steps = trajectory.steps
    for step, following in zip(steps, steps[1:], strict=False):
        if isinstance(step.gold, RoutingGold) and not step.gold.stops and following.step_type == "ans":
            teacher.append(SubStep(step.gold.query, following.gold[0], step.gold.experts))
    final = steps[-1].gold if steps[-1].step_type == "ans" else ()
    return Episode(
        id=trajectory.source,
        question=match.group(1),
        image=trajectory.images[0] if trajectory.images else None,
        golds=tuple(final),
        dataset="teacher",
        teacher=teacher,
        gold_expert=teacher[0].experts[0] if teacher else None,
    )
