"""Checkpoints saved atomically: a failed save (disk full, killed process) never damages the previous good file.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lies under ``$TMPDIR``;
when that is another filesystem than the checkpoint folder, the commit is a copy onto the target, and a disk that
fills during the copy leaves ``last.ckpt`` truncated. :class:`AtomicCheckpointIO` writes beside the target, fsyncs
the file, renames it over the target (atomic on one filesystem) and fsyncs the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from more_lightning.errors import UserError


class CheckpointSaveFailed(UserError, OSError):
    """A checkpoint could not be written (disk full, folder not writable); the previous file at its path is kept."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` for local paths that writes ``.<name>.partial`` beside the target, then renames it."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        partial = target.with_name(f".{target.name}.partial")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, target)
            folder = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except (OSError, RuntimeError) as error:  # torch.save's zip writer turns a failed write into RuntimeError
            partial.unlink(missing_ok=True)
            if not isinstance(cause := _os_error(error), OSError):
                raise
            kept = f"the previous {target.name} is kept" if target.exists() else "no earlier file was there"
            raise CheckpointSaveFailed(
                f"saving checkpoint {target} failed ({cause.strerror or cause}); {kept}. Free space (or fix the "
                f"folder's permissions) and resume with --ckpt_path {target.parent / 'last.ckpt'}"
            ) from None


def _os_error(error: BaseException) -> BaseException | None:
    """The ``OSError`` in ``error``'s chain of causes, if any."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def use_atomic_saves(trainer: pl.Trainer) -> None:
    """Save ``trainer``'s checkpoints with :class:`AtomicCheckpointIO` unless another ``CheckpointIO`` was chosen."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
