"""The progress bar of our ``fit`` / ``validate`` / ``test`` / ``predict`` runs: optimizer steps of
``trainer.max_steps``, the latest reward or loss and the routing mix, elapsed and time left.

Lightning's own bars count batches of an epoch: over our endless rollout stream (``max_steps`` ends the run) they
show ``Epoch 0/-2 … 12/4``, and rich's bar draws nothing until the end when stdout is not a terminal (``make demo >
log``). :class:`StepProgress` replaces them (``run_lightning_cli`` adds it unless a config names a progress bar or
sets ``trainer.enable_progress_bar: false``): on a terminal a rich bar, elsewhere a plain line at least every
``every`` seconds (``progress.py``), e.g. ``demo: 3/4 steps, reward 0.412, routing →table 50% →text 50%,
1 min 02 s, ~20 s left``.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar
from rich.progress import Progress, TaskID

from more_lightning.progress import LINE_EVERY_S, progress_bar

ROUTING_PREFIX = "→"
"""Progress-bar metrics named ``→<expert>`` are the routing mix of the latest rollout (``MoRELightningModule``)."""


def metrics_status(metrics: dict[str, float]) -> str:
    """``reward 0.412, routing →table 50% →text 50%``: the progress-bar metrics, the routing mix as shares."""
    scalars = [f"{name} {value:.4g}" for name, value in metrics.items() if not name.startswith(ROUTING_PREFIX)]
    mix = [f"{name} {value:.0%}" for name, value in metrics.items() if name.startswith(ROUTING_PREFIX)]
    return ", ".join([*scalars, *(["routing " + " ".join(mix)] if mix else [])])


def _count(batches) -> float | None:
    """A loop's number of batches (summed over its dataloaders); ``None`` when endless."""
    total = sum(batches) if isinstance(batches, list) else batches
    return None if total is None or math.isinf(total) else total


class StepProgress(ProgressBar):
    """Training progress in optimizer steps of ``trainer.max_steps`` (or the steps Lightning estimates from the
    epochs), with ``self.log(..., prog_bar=True)`` metrics; evaluation loops in batches.

    Args:
        every: seconds between two plain lines when stdout is not a terminal.
    """

    def __init__(self, every: float = LINE_EVERY_S) -> None:
        super().__init__()
        self.every = every
        self._enabled = True
        self._progress: Progress | None = None
        self._train: TaskID | None = None
        self._eval: TaskID | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _open(self) -> Progress | None:
        if self._enabled and self._progress is None:
            self._progress = progress_bar(every=self.every)
            self._progress.start()
        return self._progress if self._enabled else None

    def _stage(self, trainer: pl.Trainer) -> str:
        name = getattr(trainer.logger, "name", None)
        return str(name) if name else "fit"

    def _status(self, trainer: pl.Trainer) -> str:
        return metrics_status({k: float(v) for k, v in trainer.progress_bar_metrics.items()})

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if progress := self._open():
            steps = trainer.estimated_stepping_batches  # max_steps, or what the epochs of a sized dataset make
            total = steps if 0 < steps < math.inf else None
            step = trainer.global_step  # a resumed run starts where it left off; its time left counts from here
            self._train = progress.add_task(
                self._stage(trainer), total=total, completed=step, start_count=step, unit="steps", status=""
            )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if self._progress is not None and self._train is not None:
            self._progress.update(self._train, completed=trainer.global_step, status=self._status(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._progress is not None and self._train is not None:
            self._progress.update(self._train, total=trainer.global_step, completed=trainer.global_step)
            self._train = None

    def _eval_batch_start(self, description: str, batches) -> None:
        """The loop's task, made at its first batch (Lightning counts the loop's batches when it starts running)."""
        if self._eval is None and (progress := self._open()):
            self._eval = progress.add_task(description, total=_count(batches), unit="batches", status="")

    def _eval_batch_end(self, trainer: pl.Trainer) -> None:
        if self._progress is not None and self._eval is not None:
            self._progress.update(self._eval, advance=1, status=self._status(trainer))

    def _eval_end(self, *args) -> None:
        if self._progress is not None and self._eval is not None:
            done = next(task.completed for task in self._progress.tasks if task.id == self._eval)
            self._progress.update(self._eval, total=done)
            self._progress.remove_task(self._eval)
            self._eval = None

    def on_validation_batch_start(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        if trainer.sanity_checking:
            self._eval_batch_start(self.sanity_check_description, trainer.num_sanity_val_batches)
        else:
            self._eval_batch_start(self.validation_description, trainer.num_val_batches)

    def on_test_batch_start(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        self._eval_batch_start(self.test_description, trainer.num_test_batches)

    def on_predict_batch_start(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        self._eval_batch_start(self.predict_description, trainer.num_predict_batches)

    def on_validation_batch_end(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        self._eval_batch_end(trainer)

    def on_test_batch_end(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        self._eval_batch_end(trainer)

    def on_predict_batch_end(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        self._eval_batch_end(trainer)

    on_sanity_check_end = on_validation_end = on_test_end = on_predict_end = _eval_end

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
