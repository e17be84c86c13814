"""``StepGRPODataModule``: what the rollouts read (teacher steps, questions, the experts).

- Teacher-forced mode (the official Step-GRPO setting): every step of every trajectory in the official-format JSONL is
  one prompt; the rollout callback asks for the next ``k`` (:meth:`next_steps`, a seeded shuffle, cycling).
- On-policy mode: the callback asks for the next ``k`` episodes (:meth:`next_episodes`): QA questions, and the
  trajectories' questions with their teacher sub-steps; it runs them live against :attr:`experts`.
- Validation: ``val_questions`` are run as episodes by the module's ``validation_step`` (F1-Recall logged).

The batches themselves are made in the training step (``MoRELightningModule``: a rollout phase sampled with the
current weights, cut into micro-batches by its buffer); the train dataloader only counts the micro-batches for
Lightning's loop. The expert pool (and its Weaviate server) is opened in ``setup`` and closed in ``teardown``.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from dataclasses import asdict

import lightning.pytorch as pl
from torch.utils.data import DataLoader, IterableDataset

from more_lightning.data.qa import QAExample, QASource
from more_lightning.data.trajectories import TeacherStep, Trajectory, episode_from_trajectory, read_step_grpo_jsonl
from more_lightning.errors import SettingError, UserError, check_ranges
from more_lightning.experts.pool import ExpertPool
from more_lightning.policy.generation import tokenizer_of
from more_lightning.policy.loading import context_length, load_processor
from more_lightning.protocol.jsonl import BadRow, BadRowError, OnError, ReadReport, describe_reads
from more_lightning.protocol.records import Episode, RoutingGold

log = logging.getLogger(__name__)


def _single(batch):
    return batch


class MicroBatchIndices(IterableDataset):
    """0, 1, 2, ...: Lightning's loop needs a train dataloader, but a Step-GRPO micro-batch cannot come from one (it
    would be sampled ahead of the optimizer step before it, with stale weights); the training step makes it."""

    def __iter__(self):
        return itertools.count()


def _qa_source(value: QASource | dict) -> QASource:
    """LightningCLI hands dataclasses inside lists over as dicts."""
    return QASource(**value) if isinstance(value, dict) else value


def _file_and_line(row: str) -> tuple[str, int]:
    """``file:line`` (a trajectory) or ``<dataset>-<line>`` (a question) as a BadRow's path and line."""
    path, separator, line = row.rpartition(":" if ":" in row else "-")
    return (path, int(line)) if separator and line.isdigit() else (row, 0)


STEP_KINDS = ("ret", "stop", "ans")
"""The kinds of teacher step ``step_repeats`` counts: routing steps that choose an expert, routing steps that stop
(expert ``none``), answer steps."""


def step_kind(step: TeacherStep) -> str:
    """``stop`` for a routing step whose gold is the ``none`` expert, else the step's type (``ret`` or ``ans``)."""
    if isinstance(step.gold, RoutingGold) and step.gold.stops:
        return "stop"
    return step.step_type


def routing_hops(trajectory: Trajectory) -> int:
    """How many routing steps of ``trajectory`` choose experts (its stop step, routing to ``none``, does not count)."""
    return sum(step_kind(step) == "ret" for step in trajectory.steps)


def _step_repeats(repeats: dict[str, int] | None) -> dict[str, int]:
    repeats = dict(repeats or {})
    unknown = set(repeats) - set(STEP_KINDS)
    if unknown:
        raise SettingError(
            f"step_repeats: unknown step kind(s) {sorted(unknown)}; the kinds are {', '.join(map(repr, STEP_KINDS))}"
        )
    if any(not isinstance(n, int) or n < 1 for n in repeats.values()):
        raise SettingError(f"step_repeats: each count must be a whole number of at least 1, got {repeats}")
    repeats.setdefault("stop", repeats.get("ret", 1))  # a stop step is a routing step unless told otherwise
    return repeats


class NoTrainingData(UserError, ValueError):
    """Nothing to train on: every trajectory and question file is empty or all its rows are bad."""


def no_training_data(reports: list[ReadReport]) -> str:
    """Why there is nothing to train on: each file with its rows read and skipped, and the first reasons."""
    if not reports:
        return "no training data: set data.trajectories (Step-GRPO JSONL) and/or data.questions (QA files)"
    return describe_reads("no usable training data:", reports)


STREAM_SETTINGS = (
    "trajectories",
    "questions",
    "step_types",
    "step_repeats",
    "multi_hop_repeats",
    "groups_per_batch",
    "ppo_epochs",
    "seed",
)
"""The data module's arguments that decide which groups come in which order."""


def stream_settings(arguments: dict) -> dict:
    """The :data:`STREAM_SETTINGS` of a data module's arguments (from its ``__init__`` or a parsed ``data`` config),
    each question file with all its fields and every path absolute (a resume may run from another folder)."""
    settings = {name: arguments.get(name) for name in STREAM_SETTINGS}
    if settings["trajectories"] is not None:
        settings["trajectories"] = os.path.abspath(settings["trajectories"])
    questions = [asdict(_qa_source(q)) for q in settings["questions"] or []]
    settings["questions"] = [{**q, "path": os.path.abspath(q["path"])} for q in questions] or None
    return settings


class StepGRPODataModule(pl.LightningDataModule):
    """Teacher trajectories and questions in; the next steps or episodes of a rollout phase out.

    Args:
        trajectories: an official-format Step-GRPO JSONL file (teacher-forced steps; on-policy teacher episodes).
        questions: QA files whose questions on-policy rollouts run as episodes.
        experts: the retrieval experts and their Weaviate connection (on-policy rollouts and validation).
        val_questions: QA files run as episodes in validation (``val/f1_recall``).
        val_batch_size: validation episodes run together.
        image_root: where to find images by file name when a row's path does not exist.
        check_images: treat rows whose image file is missing as bad.
        on_error: ``skip`` bad rows (counted and logged) or ``raise``.
        groups_per_batch: groups per micro-batch (a group is never split).
        ppo_epochs: passes over each rollout phase's groups (1 = on-policy).
        step_types: which steps to train on (``ret``, ``ans`` or both).
        step_repeats: how many times each step of a kind appears in one pass over the teacher steps, e.g.
            ``{ret: 3}`` to oversample the short routing steps (default 1 each; the routing decision is one token
            of a routing step, but a pass holds twice as many answer steps). The kinds: ``ret`` (a routing step
            choosing an expert), ``stop`` (a routing step choosing ``none``; default: as ``ret``), ``ans``.
        multi_hop_repeats: how many times each step of a multi-hop trajectory (one routing to experts at two steps or
            more) appears in one pass, times its ``step_repeats``. Such trajectories are rare in most sets, and only
            they teach splitting a question into sub-questions and choosing the next expert from what the earlier
            steps found (default 1).
        seed: shuffling seed.
        max_prompt_tokens: the longest step prompt (text tokens) a row may hold; longer rows are bad rows (skipped
            and counted, or an error under ``on_error: raise``), measured with ``tokenizer`` when the data is read.
            Default: the model's context length minus ``completion_tokens``.
        tokenizer: the policy model (a folder, a hub name or ``tiny:<name>``) whose tokenizer measures the prompts;
            ``fit`` links it from ``model.policy.model``. ``None``: prompts are not measured.
        completion_tokens: the longest completion, kept free in the context by the default ``max_prompt_tokens``;
            ``fit`` links it from the rollout's ``sampling.max_new_tokens``.
    """

    def __init__(
        self,
        trajectories: str | None = None,
        questions: list[QASource] | None = None,
        experts: ExpertPool | None = None,
        val_questions: list[QASource] | None = None,
        val_batch_size: int = 8,
        image_root: str | None = None,
        check_images: bool = True,
        on_error: OnError = "skip",
        groups_per_batch: int = 2,
        ppo_epochs: int = 1,
        step_types: list[str] | None = None,
        step_repeats: dict[str, int] | None = None,
        multi_hop_repeats: int = 1,
        seed: int = 0,
        max_prompt_tokens: int | None = None,
        tokenizer: str | None = None,
        completion_tokens: int = 0,
    ) -> None:
        super().__init__()
        check_ranges(
            "data",
            {
                "trajectories": (
                    trajectories,
                    trajectories is not None or bool(questions),
                    "a teacher-trajectory file, or data.questions for on-policy episodes (or both)",
                ),
                "groups_per_batch": (groups_per_batch, groups_per_batch >= 1, ">= 1"),
                "ppo_epochs": (ppo_epochs, ppo_epochs >= 1, ">= 1"),
                "multi_hop_repeats": (multi_hop_repeats, multi_hop_repeats >= 1, ">= 1"),
                "val_batch_size": (val_batch_size, val_batch_size >= 1, ">= 1"),
                "max_prompt_tokens": (
                    max_prompt_tokens,
                    max_prompt_tokens is None or max_prompt_tokens >= 1,
                    "null or >= 1",
                ),
            },
        )
        self.stream_settings = stream_settings(
            {
                "trajectories": trajectories,
                "questions": questions,
                "step_types": step_types,
                "step_repeats": step_repeats,
                "multi_hop_repeats": multi_hop_repeats,
                "groups_per_batch": groups_per_batch,
                "ppo_epochs": ppo_epochs,
                "seed": seed,
            }
        )
        """Saved with the data position and compared on resume, so a position is never restored onto other data."""
        self.max_prompt_tokens = max_prompt_tokens
        self.tokenizer = tokenizer
        self.completion_tokens = completion_tokens
        self.trajectories_path = trajectories
        self.question_sources = [_qa_source(q) for q in questions or []]
        self.experts = experts
        self.val_sources = [_qa_source(q) for q in val_questions or []]
        self.val_batch_size = val_batch_size
        self.image_root = image_root
        self.check_images = check_images
        self.on_error = on_error
        self.groups_per_batch = groups_per_batch
        self.ppo_epochs = ppo_epochs
        self.step_types = set(step_types or ["ret", "ans"])
        self.step_repeats = _step_repeats(step_repeats)
        self.multi_hop_repeats = multi_hop_repeats
        self.seed = seed
        self.steps: list[TeacherStep] = []
        self.episodes: list[Episode] = []
        self.val_examples: list[QAExample] = []
        self.read_report: ReadReport | None = None
        self._step_rows: dict[int, str] = {}
        """``id(step)`` → the ``file:line`` of its trajectory."""
        self._order: list[int] = []
        self._position = 0
        self._pass = 0

    def setup(self, stage: str | None = None) -> None:
        if self.experts is not None:
            self.experts.open()
        if self._order:
            return
        reports = []
        if self.trajectories_path is not None:
            trajectories = read_step_grpo_jsonl(
                self.trajectories_path, self.on_error, self.image_root, self.check_images
            )
            self.read_report = trajectories.report
            reports.append(trajectories.report)
            self.steps = [
                s
                for t in trajectories
                for s in t.steps
                if s.step_type in self.step_types
                for _ in range(self.step_repeats.get(step_kind(s), 1) * self._trajectory_repeats(t))
            ]
            self._step_rows = {id(s): t.source for t in trajectories for s in t.steps}
            self.episodes = [episode_from_trajectory(t) for t in trajectories]
        for source in self.question_sources:
            examples = source.read()
            reports.append(examples.report)
            self.episodes += [example.to_episode() for example in examples]
        self.val_examples = [example for source in self.val_sources for example in source.read()]
        if not self.steps and not self.episodes:
            raise NoTrainingData(no_training_data(reports))
        if self.tokenizer is not None:
            self._drop_long_prompts()
        self._reshuffle()

    def _trajectory_repeats(self, trajectory: Trajectory) -> int:
        """``multi_hop_repeats`` for a multi-hop trajectory, else 1."""
        return self.multi_hop_repeats if routing_hops(trajectory) > 1 else 1

    def _drop_long_prompts(self) -> None:
        """Make every teacher row and question whose prompt text is longer than ``max_prompt_tokens`` tokens a bad
        row. One 2 MB row would otherwise run the machine out of memory in the forward pass."""
        limit = self.max_prompt_tokens or max(context_length(self.tokenizer) - self.completion_tokens, 1)
        tokenizer = tokenizer_of(load_processor(self.tokenizer))
        texts = [s.prompt.system + s.prompt.problem for s in self.steps] + [e.question for e in self.episodes]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
        rows = [self._step_rows[id(s)] for s in self.steps] + [e.id for e in self.episodes]
        long_rows = {row for row, length in zip(rows, lengths, strict=True) if length > limit}
        if not long_rows:
            return
        message = f"the prompt is longer than max_prompt_tokens={limit} tokens"
        bad = [BadRow(*_file_and_line(row), "problem", message) for row in sorted(long_rows)]
        if self.on_error == "raise":
            raise BadRowError(bad[0])
        for row in bad:
            log.warning("skipping bad row: %s", row)
        self.steps = [s for s in self.steps if self._step_rows[id(s)] not in long_rows]
        self.episodes = [e for e in self.episodes if e.id not in long_rows]
        if self.read_report is not None:
            self.read_report.bad_rows += bad
        if not self.steps and not self.episodes:
            raise NoTrainingData(f"no usable training data: every row is longer than max_prompt_tokens={limit}")

    def teardown(self, stage: str | None = None) -> None:
        if self.experts is not None:
            self.experts.close()

    @property
    def val_dataset_names(self) -> list[str]:
        return list(dict.fromkeys(e.dataset for e in self.val_examples))

    def _reshuffle(self) -> None:
        self._order = list(range(max(len(self.steps), len(self.episodes))))
        random.Random(self.seed + self._pass).shuffle(self._order)
        self._position = 0

    def _next(self, items: list, count: int) -> list:
        if not items:
            raise SettingError(
                "this rollout mode needs data the data module was not given "
                "(teacher-forced: `trajectories`; on-policy: `questions` or `trajectories`)"
            )
        ranks, rank = self._ranks()
        chosen = []
        while len(chosen) < count * ranks:  # every rank walks the same order and keeps its own share
            if self._position == len(self._order):
                self._pass += 1
                self._reshuffle()
            chosen.append(items[self._order[self._position] % len(items)])
            self._position += 1
        return chosen[rank::ranks]

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def next_steps(self, count: int) -> list[TeacherStep]:
        """The next ``count`` teacher steps of this rank (reshuffled after each pass over the file). Under several
        ranks each takes a different ``count`` of the same shuffled order, so no step is rolled out twice."""
        return self._next(self.steps, count)

    def next_episodes(self, count: int) -> list[Episode]:
        """The next ``count`` episodes of this rank for on-policy rollouts (shared out as :meth:`next_steps`)."""
        return self._next(self.episodes, count)

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        if isinstance(batch, list) and batch and isinstance(batch[0], QAExample):
            return batch  # questions, not tensors: the episode runner moves what it encodes
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(MicroBatchIndices(), batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        if not self.val_examples:
            return []
        return DataLoader(self.val_examples, batch_size=self.val_batch_size, collate_fn=_single, num_workers=0)

    def state_dict(self) -> dict:
        """Where the data order is, and the settings that decide it (the rollout buffer is the module's)."""
        return {"position": self._position, "pass": self._pass, "settings": self.stream_settings}

    def load_state_dict(self, state: dict) -> None:
        self._pass = state["pass"]
        self._reshuffle()
        self._position = state["position"]
