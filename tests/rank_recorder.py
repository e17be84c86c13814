"""A test-only callback: each rank writes what its rollout phases produced, so a test can compare the ranks."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl


class RecordRolloutGroups(pl.Callback):
    """After each training step, append this rank's current rollout groups (prompt and rewards) to a JSONL file."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        groups = pl_module.buffer.groups
        row = {
            "step": trainer.global_step,
            "world_size": trainer.world_size,
            "prompts": [g.prompt.problem for g in groups],
            "rewards": [g.rewards.tolist() for g in groups],
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / f"rank{trainer.global_rank}.jsonl").open("a") as handle:
            handle.write(json.dumps(row) + "\n")
