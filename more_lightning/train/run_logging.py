"""What a run leaves behind for its loggers: the resolved config, and tables of sample rollouts.

- :class:`SaveResolvedConfig` (LightningCLI's config callback for ``fit``): ``config.yaml`` in the log folder, as
  Lightning writes it, and — for W&B — the same config as the run's config (searchable in the dashboard; sweeps read
  it) plus the YAML file in the run's files.
- :class:`RolloutSamplesTable`: every ``every_n_steps`` steps, the current rollout phase's samples (prompt, output,
  expert, reward, advantage) as a table under a new key ``rollouts/step_{k}`` (W&B tables are never overwritten);
  other loggers get the same rows appended to ``rollout_samples.jsonl`` in their log folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

COLUMNS = ["step", "step_type", "prompt", "output", "expert", "reward", "advantage"]


class SaveResolvedConfig(SaveConfigCallback):
    """Save the resolved config to the log folder and, for W&B, into the run."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import yaml

                text = self.parser.dump(self.config, skip_unset=False)
                logger.experiment.config.update(yaml.safe_load(text), allow_val_change=True)
                path = Path(logger.experiment.dir) / "config.yaml"
                path.write_text(text)


class RolloutSamplesTable(pl.Callback):
    """Log sample rollouts as a table every ``every_n_steps`` optimizer steps.

    Args:
        every_n_steps: how often (in optimizer steps).
        max_rows: samples per table (the first groups of the phase, all their samples).
        prompt_chars: the prompt's last ``prompt_chars`` characters are shown (the question sits at the end).
    """

    def __init__(self, every_n_steps: int = 50, max_rows: int = 32, prompt_chars: int = 600) -> None:
        self.every_n_steps = every_n_steps
        self.max_rows = max_rows
        self.prompt_chars = prompt_chars

    def rows(self, trainer: pl.Trainer) -> list[list]:
        rows = []
        for group in trainer.lightning_module.buffer.groups:
            for i, text in enumerate(group.texts):
                expert = ", ".join(group.experts[i]) if i < len(group.experts) else ""
                rows.append(
                    [
                        trainer.global_step,
                        group.step_type,
                        group.prompt.problem[-self.prompt_chars :],
                        text,
                        expert,
                        float(group.rewards[i]),
                        float(group.advantages[i]),
                    ]
                )
        return rows[: self.max_rows]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step % self.every_n_steps:
            return
        rows = self.rows(trainer)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key=f"rollouts/step_{step}", columns=COLUMNS, data=rows, step=step)
            elif logger.log_dir:
                path = Path(logger.log_dir) / "rollout_samples.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a") as handle:
                    for row in rows:
                        handle.write(json.dumps(dict(zip(COLUMNS, row, strict=True))) + "\n")
