"""The trial's side of an Optuna sweep: a Lightning callback in the ``fit`` process that reports the swept metric.

``sweep`` runs each trial as a command (``fit ...``) with the study's storage, its name and the trial id in the
environment (:data:`ENVIRONMENT`); ``cli.py`` then adds :class:`ReportToOptunaTrial` to the trainer. It reports the
metric at every training step and validation (the pruner's resource is the global step), stops the fit when the
pruner says so, and leaves the last value on the trial for the sweep to read.

Optuna's own ``PyTorchLightningPruningCallback`` reports once per epoch at validation end; a Step-GRPO fit is often
one long epoch whose metrics (``reward/mean``) are logged per step, so it would never report — hence this one.
"""

from __future__ import annotations

import os

import lightning.pytorch as pl

ENVIRONMENT = {
    "storage": "MORE_LIGHTNING_OPTUNA_STORAGE",
    "study": "MORE_LIGHTNING_OPTUNA_STUDY",
    "trial_id": "MORE_LIGHTNING_OPTUNA_TRIAL_ID",
    "metric": "MORE_LIGHTNING_OPTUNA_METRIC",
}
LAST_VALUE, PRUNED_AT = "last_value", "pruned_at_step"
"""Trial user attributes the fit process writes."""


class ReportToOptunaTrial(pl.Callback):
    """Report ``metric`` to the Optuna trial ``trial_id`` of ``study`` in ``storage``; stop when it is pruned."""

    def __init__(self, storage: str, study: str, trial_id: int, metric: str) -> None:
        self.storage, self.study, self.trial_id, self.metric = storage, study, trial_id, metric
        self.trial = None
        self.last: float | None = None

    @classmethod
    def from_environment(cls) -> ReportToOptunaTrial | None:
        """The reporter a sweep asked for, or ``None`` outside a sweep."""
        values = {key: os.environ.get(name) for key, name in ENVIRONMENT.items()}
        if not all(values.values()):
            return None
        return cls(values["storage"], values["study"], int(values["trial_id"]), values["metric"])

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.is_global_zero and self.trial is None:
            import optuna

            study = optuna.load_study(study_name=self.study, storage=self.storage)
            self.trial = optuna.trial.Trial(study, self.trial_id)

    def _report(self, trainer: pl.Trainer) -> None:
        prune = False
        if self.trial is not None and self.metric in trainer.callback_metrics:
            self.last = float(trainer.callback_metrics[self.metric])
            self.trial.report(self.last, trainer.global_step)
            prune = self.trial.should_prune()
            if prune:
                self.trial.set_user_attr(PRUNED_AT, trainer.global_step)
        if trainer.strategy.broadcast(prune):  # every rank stops together
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        self._report(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.trial is not None and self.last is not None:
            self.trial.set_user_attr(LAST_VALUE, self.last)
