"""An open_clip model that embeds images and texts into one space (the text-image expert's embedder).

The architecture is any open_clip config name (``ViT-L-14``, ...), an ``hf-hub:<org>/<name>`` model id (config and
weights from the Hugging Face hub), or ``tiny-clip`` (shipped with more_lightning, 64-d, ~3.5M parameters, for tests
and the CPU demo). Weights: ``pretrained`` — one of open_clip's tags for that architecture (``openai``,
``laion2b_s32b_b82k``, ...; downloaded once into the HF cache) or a local checkpoint file — or ``weights``, a local
``state_dict`` file. An unknown tag is an error listing the known ones, and a tag that cannot be downloaded is an error
(never a silent fall-back to random weights). With neither, the weights are random and a warning says so; they are
drawn from a fixed seed (``RANDOM_WEIGHTS_SEED``), so the process that searches a collection embeds with the same
network as the one that indexed it: an image still finds itself and its look-alikes, though text-image similarity
means nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from more_lightning.errors import SettingError
from more_lightning.policy.model_source import ModelNotFound

log = logging.getLogger(__name__)

TINY_CLIP = "tiny-clip"
RANDOM_WEIGHTS_SEED = 0
"""The seed of random weights. Unseeded, each process drew its own network, and a collection indexed by one was
searched with another's vectors: noise, even for the very image indexed."""
_ASSETS = Path(__file__).resolve().parent.parent / "assets"


def register_tiny_clip() -> None:
    """Make ``tiny-clip`` an open_clip model name."""
    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        open_clip.add_model_config(_ASSETS / f"{TINY_CLIP}.json")


HF_HUB = "hf-hub:"


def _check_pretrained(architecture: str, pretrained: str) -> None:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(architecture)
    if pretrained not in tags and not Path(pretrained).is_file():
        known = ", ".join(tags) if tags else "none: give a local checkpoint file, or use clip_weights"
        raise SettingError(f"open_clip has no pretrained tag {pretrained!r} for {architecture!r} (known: {known})")


@lru_cache(maxsize=4)
def _load(architecture: str, weights: str | None, pretrained: str | None, device: str):
    import open_clip

    register_tiny_clip()
    if pretrained and weights:
        raise SettingError("give either clip_pretrained (an open_clip tag or checkpoint) or clip_weights, not both")
    if pretrained:
        _check_pretrained(architecture, pretrained)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(
                architecture, pretrained=pretrained, device=device
            )
    except RuntimeError as error:
        if not pretrained and not architecture.startswith(HF_HUB):
            raise
        raise ModelNotFound(
            f"could not load the weights of open_clip {architecture!r} (pretrained {pretrained!r}): {error}. "
            "They are downloaded from the Hugging Face hub once: run with internet access (unset HF_HUB_OFFLINE), "
            "or copy the hub cache from a machine that has them, or set clip_weights to a local state_dict file."
        ) from None
    if weights:
        model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    elif not pretrained and not architecture.startswith(HF_HUB):
        log.warning(
            "open_clip %r has no weights: using RANDOM weights (seeded: an image finds itself and look-alikes, but "
            "image-text similarity is meaningless); set `clip_pretrained` to an open_clip tag (e.g. openai) or "
            "`clip_weights` to a state_dict file.",
            architecture,
        )
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(architecture)


class ClipEmbedder:
    """Unit vectors for images and texts from one open_clip model.

    Args:
        architecture: an open_clip model name (``tiny-clip``, ``ViT-L-14``, ...) or ``hf-hub:<org>/<name>``.
        weights: a local state_dict file.
        pretrained: an open_clip pretrained tag of ``architecture`` (``openai``, ``laion2b_s32b_b82k``) or a local
            checkpoint file. Neither this nor ``weights`` (nor an ``hf-hub:`` id): random weights, with a warning.
        device: ``cpu``, ``cuda``, ...
        batch_size: items per forward pass.
    """

    def __init__(
        self,
        architecture: str = TINY_CLIP,
        weights: str | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        pretrained: str | None = None,
    ) -> None:
        self.architecture = architecture
        self.weights = weights
        self.pretrained = pretrained
        self.batch_size = batch_size
        self.device = device
        self.model, self.preprocess, self.tokenizer = _load(architecture, weights, pretrained, device)
        self.dim = int(self.embed_texts(["probe"]).shape[1])

    @property
    def id(self) -> str:
        local = self.weights or (self.pretrained if self.pretrained and Path(self.pretrained).is_file() else None)
        source = Path(local).name if local else self.pretrained
        seeded = f"random-seed{RANDOM_WEIGHTS_SEED}"
        return f"open_clip:{self.architecture}:{source or ('hub' if self.architecture.startswith(HF_HUB) else seeded)}"

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
