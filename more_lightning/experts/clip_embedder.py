"""An open_clip model that embeds images and texts into one space (the text-image expert's embedder).

The architecture is any open_clip config name; ``tiny-clip`` (shipped with more_lightning, 64-d, ~3.5M parameters)
is registered for tests and the CPU demo. Weights come from a local file (``torch.save(model.state_dict())`` of a
CLIP you trained or downloaded); with none, the model keeps random weights and says so in a warning, because no
pretrained CLIP can be downloaded on an offline machine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

TINY_CLIP = "tiny-clip"
_ASSETS = Path(__file__).resolve().parent.parent / "assets"


def register_tiny_clip() -> None:
    """Make ``tiny-clip`` an open_clip model name."""
    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        open_clip.add_model_config(_ASSETS / f"{TINY_CLIP}.json")


@lru_cache(maxsize=4)
def _load(architecture: str, weights: str | None, device: str):
    import open_clip

    register_tiny_clip()
    model, _, preprocess = open_clip.create_model_and_transforms(architecture, pretrained=None, device=device)
    if weights:
        model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    else:
        log.warning(
            "open_clip %r has no weights file: using RANDOM weights, so image-text similarity is "
            "meaningless; set `clip_weights` to a state_dict file of a trained CLIP of this architecture.",
            architecture,
        )
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(architecture)


class ClipEmbedder:
    """Unit vectors for images and texts from one open_clip model.

    Args:
        architecture: an open_clip model name (``tiny-clip``, ``ViT-B-32``, ...).
        weights: a local state_dict file; ``None`` means random weights (a warning is logged).
        device: ``cpu``, ``cuda``, ...
        batch_size: items per forward pass.
    """

    def __init__(
        self, architecture: str = TINY_CLIP, weights: str | None = None, device: str = "cpu", batch_size: int = 32
    ) -> None:
        self.architecture = architecture
        self.weights = weights
        self.batch_size = batch_size
        self.device = device
        self.model, self.preprocess, self.tokenizer = _load(architecture, weights, device)
        self.dim = int(self.embed_texts(["probe"]).shape[1])

    @property
    def id(self) -> str:
        return f"open_clip:{self.architecture}:{Path(self.weights).name if self.weights else 'random'}"

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start : start + self.batch_size])).to(self.device)
            chunks.append(torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)

    @torch.no_grad()
    def embed_images(self, images: Sequence) -> np.ndarray:
        """``images``: PIL images (already opened and converted to RGB)."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.preprocess(im) for im in images[start : start + self.batch_size]])
            chunks.append(
                torch.nn.functional.normalize(self.model.encode_image(pixels.to(self.device)).float(), dim=-1).cpu()
            )
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, self.dim), np.float32)


def fuse(*parts: np.ndarray) -> np.ndarray:
    """Score fusion as in UniIR's CLIP-SF: the normalised sum of unit vectors."""
    total = np.sum(parts, axis=0)
    return total / np.clip(np.linalg.norm(total, axis=-1, keepdims=True), 1e-12, None)
