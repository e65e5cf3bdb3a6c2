"""Multilingual retrieval: per language, R@1 both ways with the protocol's facet set (the
paper: the single raw prompt); then the average.

Images are embedded once; each language is scored on the images it has captions for, so
its chance level is reported beside it.
"""

from __future__ import annotations

import numpy as np
import torch

from evaluations.datasets import MultilingualSet
from evaluations.embedding import embed_texts
from evaluations.hits import recall_names
from evaluations.metrics import retrieval_metrics
from evaluations.tasks.base import TaskOutput, TextProtocol

KEYS = recall_names(1)


def evaluate_multilingual(model, data: MultilingualSet, image_emb: torch.Tensor, protocol: TextProtocol,
                          batch_size: int = 64, cache_texts: bool = False) -> TaskOutput:
    """``image_emb``: the embeddings of ``data.images``."""
    metrics: dict[str, float] = {}
    per_language: dict[str, dict] = {}
    for lang in data.languages:
        used, subset = data.for_language(lang)
        text_emb = embed_texts(model, subset.texts, protocol.facet_set, batch_size, desc=f"{data.name}: {lang} texts",
                               use_cache=cache_texts, pooling=protocol.pooling)
        m = retrieval_metrics(image_emb[used], text_emb, subset.text_to_image, ks=(1,))
        for key in KEYS:
            metrics[f"{lang}_{key}"] = m[key]
            metrics[f"chance_{lang}_{key}"] = m[f"chance_{key}"]
        per_language[lang] = {"n_images": len(subset.images), "n_texts": len(subset.texts)}
    for key in KEYS:
        metrics[key] = float(np.mean([metrics[f"{lang}_{key}"] for lang in data.languages]))
        metrics[f"chance_{key}"] = float(np.mean([metrics[f"chance_{lang}_{key}"] for lang in data.languages]))
    details = {"n_images": len(data.images), "languages": per_language, "facet_set": protocol.facet_set}
    return TaskOutput(metrics, details)
