"""Embedding evaluation images and texts with a model, in batches, with progress bars.

The model is anything with ``preprocess(PIL) -> [3,H,W]``, ``encode_image([B,3,H,W]) -> [B,D]``
and ``encode_text(texts, facet_set) -> [N,D]`` (a ``flame.model.FlameModel``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from evaluations.images import read_image


@torch.inference_mode()
def embed_images(model, images: Sequence[str], batch_size: int = 64, desc: str = "embedding images") -> torch.Tensor:
    """``[N, D]`` float32 embeddings from ``model.preprocess`` + ``model.encode_image``, L2-normalised."""
    chunks = []
    with tqdm(total=len(images), desc=desc, unit="img") as bar:
        for start in range(0, len(images), batch_size):
            batch = [model.preprocess(read_image(ref)) for ref in images[start:start + batch_size]]
            emb = model.encode_image(torch.stack(batch))
            chunks.append(torch.nn.functional.normalize(emb.float(), dim=-1))
            bar.update(len(batch))
    return torch.cat(chunks)


@torch.inference_mode()
def embed_texts(model, texts: Sequence[str], facet_set: str = "raw", batch_size: int = 64, desc: str = "embedding texts") -> torch.Tensor:
    """``[N, D]`` float32 embeddings from ``model.encode_text`` (frozen LLM, facet-averaged), L2-normalised."""
    chunks = []
    with tqdm(total=len(texts), desc=desc, unit="text") as bar:
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start:start + batch_size])
            emb = model.encode_text(batch, facet_set=facet_set)
            chunks.append(torch.nn.functional.normalize(emb.float(), dim=-1))
            bar.update(len(batch))
    return torch.cat(chunks)
