"""The text-image expert: images with captions in one open_clip space; a text query (and optionally the question's
image) finds them, and the policy reads the captions.

Each object's vector fuses its image and caption embeddings (normalised sum, as UniIR's CLIP-SF score fusion); a query
vector fuses the query text with the question's image when there is one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from more_lightning.experts.clip_embedder import TINY_CLIP, ClipEmbedder, fuse
from more_lightning.experts.corpus import CorpusRecord, read_image_captions
from more_lightning.experts.weaviate_expert import SearchMode, WeaviateExpert
from more_lightning.protocol.images import ImageError, open_image
from more_lightning.protocol.jsonl import OnError, ReadResult


class TextImageExpert(WeaviateExpert):
    """Images with captions (a JSONL of ``{id, file, caption}`` plus an image folder).

    Args:
        image_folder: where the image files are (default: the captions file's folder).
        clip_architecture: an open_clip model name (``tiny-clip`` for tests and the CPU demo, ``ViT-L-14``, ...) or an
            ``hf-hub:<org>/<name>`` model id.
        clip_pretrained: an open_clip pretrained tag of the architecture (``openai``, ``laion2b_s32b_b82k``; downloaded
            once) or a local checkpoint file.
        clip_weights: a local state_dict file. Without it, ``clip_pretrained`` or an ``hf-hub:`` id the weights are
            random (a warning says so).
        search_mode: ``hybrid`` by default (BM25 over captions plus the CLIP vectors).
        **kwargs: see :class:`WeaviateExpert`.
    """

    def __init__(
        self,
        name: str = "text image retriever",
        prefix: str = "tir",
        collection: str = "ImageCaptions",
        title: str | None = "Text Image Retriever",
        guideline: str = (
            'When sub-question explicitly references visual elements (e.g., "Describe the painting style of...")'
        ),
        image_folder: str | None = None,
        clip_architecture: str = TINY_CLIP,
        clip_weights: str | None = None,
        clip_pretrained: str | None = None,
        search_mode: SearchMode = "hybrid",
        **kwargs,
    ) -> None:
        super().__init__(
            name=name,
            prefix=prefix,
            collection=collection,
            title=title,
            guideline=guideline,
            search_mode=search_mode,
            **kwargs,
        )
        self.image_folder = image_folder
        self.clip_architecture = clip_architecture
        self.clip_weights = clip_weights
        self.clip_pretrained = clip_pretrained
        self._clip: ClipEmbedder | None = None

    @property
    def clip(self) -> ClipEmbedder:
        if self._clip is None:
            self._clip = ClipEmbedder(self.clip_architecture, self.clip_weights, pretrained=self.clip_pretrained)
        return self._clip

    @property
    def embedder_id(self) -> str:
        return self.clip.id

    @property
    def dim(self) -> int:
        return self.clip.dim

    def extra_properties(self) -> list:
        from weaviate.classes.config import DataType, Property, Tokenization

        return [Property(name="file", data_type=DataType.TEXT, tokenization=Tokenization.FIELD)]

    def read_corpus(self, on_error: OnError = "skip") -> ReadResult[CorpusRecord]:
        return read_image_captions(self.corpus, self.image_folder, on_error)

    def embed_records(self, records: Sequence[CorpusRecord]) -> tuple[np.ndarray, dict[int, str]]:
        images, errors = [], {}
        for i, record in enumerate(records):
            try:
                images.append(open_image(record.image))
            except ImageError as error:  # changed or removed since the corpus was read
                errors[i] = str(error)
        ok = [r for i, r in enumerate(records) if i not in errors]
        if not ok:
            return np.zeros((0, self.dim), np.float32), errors
        return fuse(self.clip.embed_images(images), self.clip.embed_texts([r.text for r in ok])), errors

    def embed_queries(self, queries: Sequence[str], images: Sequence[str | None] | None = None) -> np.ndarray:
        vectors = self.clip.embed_texts(queries)
        if images is not None:
            with_image = [i for i, path in enumerate(images) if path]
            if with_image:
                pictures = self.clip.embed_images([open_image(images[i]) for i in with_image])
                vectors[with_image] = fuse(vectors[with_image], pictures)
        return vectors
