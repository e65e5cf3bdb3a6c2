"""Embedding evaluation images and texts with a model, in batches, with progress bars.

The model is anything with ``preprocess(PIL) -> [3,H,W]``, ``encode_image([B,3,H,W]) -> [B,D]``
(and for the linear probe ``encode_image_backbone([B,3,H,W]) -> [B,width]``) and
``encode_text(texts, facet_set, pooling) -> [N,D]`` (a ``flame.model.FlameModel``).
Text embeddings are cached on disk by the model's ``text_fingerprint`` (see ``text_cache``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from evaluations.tasks.base import BACKBONE, EMBEDDING
from evaluations.text_cache import TextEmbeddingCache
from flame.config import RAW_FACET_SET
from flame.data.images import read_image
from flame.text_modes.facet_pooling import MEAN_THEN_NORMALIZE


def image_encoder(model, features: str = EMBEDDING):
    """The model's method that gives ``features`` (``EMBEDDING`` or ``BACKBONE``)."""
    if features == EMBEDDING:
        return model.encode_image
    if features == BACKBONE:
        return model.encode_image_backbone
    raise ValueError(f"unknown image features {features!r}; known: {EMBEDDING}, {BACKBONE}")


@torch.inference_mode()
def embed_images(model, images: Sequence[str], batch_size: int = 64, desc: str = "embedding images",
                 features: str = EMBEDDING, max_pixels: int | None = None) -> torch.Tensor:
    """``[N, D]`` float32 ``features`` of the images (``model.preprocess`` + the encoder of
    ``features``, see ``image_encoder``), L2-normalised; images are read with ``max_pixels``."""
    encode = image_encoder(model, features)
    chunks = []
    with tqdm(total=len(images), desc=desc, unit="img") as bar:
        for start in range(0, len(images), batch_size):
            batch = [model.preprocess(read_image(ref, max_pixels)) for ref in images[start:start + batch_size]]
            emb = encode(torch.stack(batch))
            chunks.append(torch.nn.functional.normalize(emb.float(), dim=-1))
            bar.update(len(batch))
    return torch.cat(chunks)


@torch.inference_mode()
def embed_texts(model, texts: Sequence[str], facet_set: str = RAW_FACET_SET, batch_size: int = 64, desc: str = "embedding texts",
                use_cache: bool = False, pooling: str = MEAN_THEN_NORMALIZE) -> torch.Tensor:
    """``[N, D]`` float32 embeddings from ``model.encode_text`` (frozen LLM, the facet set's
    states pooled by ``pooling``), L2-normalised. Cached texts are not embedded again."""
    texts = list(texts)
    fingerprint = getattr(model, "text_fingerprint", None)
    cache = TextEmbeddingCache(fingerprint, f"{facet_set}.{pooling}") if use_cache and fingerprint else None
    found, missing = cache.get(texts) if cache else ({}, list(range(len(texts))))
    computed = []
    with tqdm(total=len(texts), initial=len(found), desc=desc, unit="text") as bar:
        try:
            for start in range(0, len(missing), batch_size):
                batch = [texts[i] for i in missing[start:start + batch_size]]
                emb = torch.nn.functional.normalize(model.encode_text(batch, facet_set=facet_set, pooling=pooling).float(), dim=-1)
                computed.append(emb)
                if cache is not None:
                    cache.put(batch, emb)
                bar.update(len(batch))
        finally:  # an interrupted run keeps what it embedded
            if cache is not None:
                cache.flush()
    rows: list[torch.Tensor | None] = [found.get(i) for i in range(len(texts))]
    if computed:
        for i, row in zip(missing, torch.cat(computed)):
            rows[i] = row
    if not rows:
        raise ValueError("no texts to embed")
    return torch.stack(rows)
