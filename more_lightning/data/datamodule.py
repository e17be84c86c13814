"""``StepGRPODataModule``: the teacher steps to roll out, and the batches of rollout groups to train on.

Teacher-forced mode (the official Step-GRPO setting): every step of every trajectory in the official-format JSONL is
one prompt. The rollout callback asks for the next ``k`` steps (:meth:`next_steps`, a seeded shuffle, cycling through
the file), samples a group for each, and fills :attr:`buffer`; the train dataloader yields micro-batches of whole
groups from it (``num_workers`` is 0: the rollout needs the model, in this process).
"""

from __future__ import annotations

import random

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from more_lightning.data.buffer import GroupBatches, RolloutBuffer
from more_lightning.data.jsonl import OnError, ReadReport
from more_lightning.data.trajectories import TeacherStep, read_step_grpo_jsonl


def _single(batch):
    return batch


class StepGRPODataModule(pl.LightningDataModule):
    """Teacher trajectories in, batches of Step-GRPO groups out.

    Args:
        trajectories: an official-format Step-GRPO JSONL file.
        image_root: where to find images by file name when a row's path does not exist.
        check_images: treat rows whose image file is missing as bad.
        on_error: ``skip`` bad rows (counted and logged) or ``raise``.
        groups_per_batch: groups per micro-batch (a group is never split).
        ppo_epochs: passes over each rollout phase's groups (1 = on-policy).
        step_types: which steps to train on (``ret``, ``ans`` or both).
        seed: shuffling seed.
    """

    def __init__(
        self,
        trajectories: str,
        image_root: str | None = None,
        check_images: bool = True,
        on_error: OnError = "skip",
        groups_per_batch: int = 2,
        ppo_epochs: int = 1,
        step_types: list[str] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.trajectories_path = trajectories
        self.image_root = image_root
        self.check_images = check_images
        self.on_error = on_error
        self.groups_per_batch = groups_per_batch
        self.ppo_epochs = ppo_epochs
        self.step_types = set(step_types or ["ret", "ans"])
        self.seed = seed
        self.buffer = RolloutBuffer()
        self.steps: list[TeacherStep] = []
        self.read_report: ReadReport | None = None
        self._order: list[int] = []
        self._position = 0
        self._pass = 0

    def setup(self, stage: str | None = None) -> None:
        if self.steps:
            return
        trajectories = read_step_grpo_jsonl(self.trajectories_path, self.on_error, self.image_root, self.check_images)
        self.read_report = trajectories.report
        self.steps = [s for t in trajectories for s in t.steps if s.step_type in self.step_types]
        if not self.steps:
            raise ValueError(f"{self.trajectories_path}: no usable steps of types {sorted(self.step_types)}")
        self._reshuffle()

    def _reshuffle(self) -> None:
        self._order = list(range(len(self.steps)))
        random.Random(self.seed + self._pass).shuffle(self._order)
        self._position = 0

    def next_steps(self, count: int) -> list[TeacherStep]:
        """The next ``count`` teacher steps (reshuffled after each pass over the file)."""
        chosen = []
        while len(chosen) < count:
            if self._position == len(self._order):
                self._pass += 1
                self._reshuffle()
            chosen.append(self.steps[self._order[self._position]])
            self._position += 1
        return chosen

    def train_dataloader(self) -> DataLoader:
        accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        stream = GroupBatches(self.buffer, self.groups_per_batch, self.ppo_epochs, accumulate, self.seed)
        return DataLoader(stream, batch_size=None, collate_fn=_single, num_workers=0)

    def state_dict(self) -> dict:
        return {"position": self._position, "pass": self._pass, "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._pass = state["pass"]
        self._reshuffle()
        self._position = state["position"]
        self.buffer.load_state_dict(state["buffer"])
