"""A disk that fills while a checkpoint is saved leaves the previous ``last.ckpt`` whole (a real 1 MiB tmpfs:
Lightning's own save copies its temporary file from ``$TMPDIR`` onto the target and truncates it)."""

from __future__ import annotations

import subprocess

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from more_lightning.train.atomic_checkpoint import CheckpointSaveFailed, use_atomic_saves

pytestmark = pytest.mark.integration


class PaddedModel(BoringModel):
    """A model whose checkpoints carry ``padding`` extra bytes."""

    padding = 0

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["padding"] = torch.zeros(self.padding, dtype=torch.uint8)


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_during_a_save_keeps_the_last_good_checkpoint(small_disk, tmp_path):
    model = PaddedModel()
    trainer = Trainer(default_root_dir=tmp_path, max_steps=1, logger=False, enable_checkpointing=False)
    trainer.fit(model)
    use_atomic_saves(trainer)
    last = small_disk / "last.ckpt"
    model.padding = 200_000
    trainer.save_checkpoint(last)
    good = last.read_bytes()
    (small_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 2 * len(good) - 64 * 1024))
    model.padding = 700_000  # more than the free space plus the old file
    with pytest.raises(CheckpointSaveFailed, match=r"last.ckpt failed \(No space left on device\); the previous"):
        trainer.save_checkpoint(last)
    assert last.read_bytes() == good
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "last.ckpt"], "no partial file is left"
    assert torch.load(last, weights_only=True)["padding"].numel() == 200_000
