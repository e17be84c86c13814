"""``SaveAdapter``: write the trained LoRA adapter (and the processor) in the plain PEFT format at the end of ``fit``.

The folder loads with ``PeftModel.from_pretrained(base_model, folder)``; ``adapter_config.json`` names the base model.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl


class SaveAdapter(pl.Callback):
    """Save the adapter when training ends.

    Args:
        dirpath: the output folder (created; overwritten).
        save_processor: also save the tokenizer/processor next to the adapter.
    """

    def __init__(self, dirpath: str = "checkpoints/adapter", save_processor: bool = True) -> None:
        self.dirpath = dirpath
        self.save_processor = save_processor

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        folder = Path(self.dirpath)
        folder.mkdir(parents=True, exist_ok=True)
        pl_module.model.save_pretrained(folder)
        if self.save_processor and pl_module.processor is not None:
            pl_module.processor.save_pretrained(folder)
        print(f"LoRA adapter saved to {folder}")
