"""Metrics on precomputed, L2-normalised embeddings, named as in CLIP_benchmark.

Retrieval follows CLIP_benchmark's convention: ``image_retrieval_recall@k`` is the share
of texts whose image is among the k images scored highest for that text;
``text_retrieval_recall@k`` is the share of images with at least one of their texts
among the k texts scored highest for that image. Chance levels are computed exactly for
the same gallery sizes, so "above chance" is checkable from the result alone.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

RECALL_KS = (1, 5, 10)


def _check_embeddings(name: str, emb: torch.Tensor) -> None:
    if emb.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {tuple(emb.shape)}")
    if not torch.isfinite(emb).all():
        raise ValueError(f"{name} contains NaN or inf")


def hit_rate(hits: torch.Tensor) -> float:
    """The share of queries that hit: every recall and accuracy here is one of these."""
    return hits.float().mean().item()


def _retrieval_index(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: Sequence[int] | torch.Tensor) -> torch.Tensor:
    _check_embeddings("image embeddings", image_emb)
    _check_embeddings("text embeddings", text_emb)
    index = torch.as_tensor(text_to_image, dtype=torch.long)
    n_images, n_texts = image_emb.shape[0], text_emb.shape[0]
    if index.shape != (n_texts,):
        raise ValueError(f"text_to_image has {index.numel()} entries for {n_texts} texts")
    if n_images == 0 or n_texts == 0:
        raise ValueError("retrieval needs at least one image and one text")
    if index.min() < 0 or index.max() >= n_images:
        raise ValueError(f"text_to_image points outside 0..{n_images - 1}")
    texts_per_image = torch.bincount(index, minlength=n_images)
    if (texts_per_image == 0).any():
        raise ValueError(f"{int((texts_per_image == 0).sum())} images have no text")
    return index


def retrieval_hits(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: Sequence[int] | torch.Tensor,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, torch.Tensor]:
    """Per query, whether it hit: ``image_retrieval_recall@k`` -> ``[texts]`` bool (the text's
    image among its top k images), ``text_retrieval_recall@k`` -> ``[images]`` bool (one of
    the image's texts among its top k texts)."""
    index = _retrieval_index(image_emb, text_emb, text_to_image)
    n_images, n_texts = image_emb.shape[0], text_emb.shape[0]
    scores = text_emb.float() @ image_emb.float().T  # [texts, images]
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(n_texts), index] = True

    hits: dict[str, torch.Tensor] = {}
    for k in ks:
        top_images = scores.topk(min(k, n_images), dim=1).indices  # per text
        hits[f"image_retrieval_recall@{k}"] = positives.gather(1, top_images).any(dim=1)
        top_texts = scores.T.topk(min(k, n_texts), dim=1).indices  # per image
        hits[f"text_retrieval_recall@{k}"] = positives.T.gather(1, top_texts).any(dim=1)
    return hits


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: Sequence[int] | torch.Tensor,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    """R@k both ways, their mean, and the chance level of each, for texts pointing at images."""
    hits = retrieval_hits(image_emb, text_emb, text_to_image, ks)
    index = torch.as_tensor(text_to_image, dtype=torch.long)
    n_images, n_texts = image_emb.shape[0], text_emb.shape[0]
    texts_per_image = torch.bincount(index, minlength=n_images)

    metrics: dict[str, float] = {}
    for k in ks:
        k_img, k_txt = min(k, n_images), min(k, n_texts)
        i2t_chance = float(np.mean([_chance_any_hit(n_texts, int(c), k_txt) for c in texts_per_image]))
        t2i_chance = k_img / n_images
        metrics[f"image_retrieval_recall@{k}"] = hit_rate(hits[f"image_retrieval_recall@{k}"])
        metrics[f"text_retrieval_recall@{k}"] = hit_rate(hits[f"text_retrieval_recall@{k}"])
        metrics[f"mean_recall@{k}"] = mean_recall(metrics[f"image_retrieval_recall@{k}"], metrics[f"text_retrieval_recall@{k}"])
        metrics[f"chance_image_retrieval_recall@{k}"] = t2i_chance
        metrics[f"chance_text_retrieval_recall@{k}"] = i2t_chance
        metrics[f"chance_mean_recall@{k}"] = mean_recall(t2i_chance, i2t_chance)
    return metrics


def mean_recall(image_retrieval: float, text_retrieval: float) -> float:
    return (image_retrieval + text_retrieval) / 2


def _chance_any_hit(n_items: int, n_positive: int, k: int) -> float:
    """P(at least one of n_positive items is among k drawn without replacement from n_items)."""
    if k >= n_items:
        return 1.0
    return 1.0 - math.comb(n_items - n_positive, k) / math.comb(n_items, k)


def classification_metrics(logits: torch.Tensor, targets: Sequence[int] | torch.Tensor, prefix: str = "") -> dict[str, float]:
    """acc1, acc5 (when there are at least 5 classes), mean per-class recall, and their chance levels.

    Chance assumes a uniformly random ranking of the classes, the same for every image.
    """
    _check_embeddings("logits", logits)
    targets = torch.as_tensor(targets, dtype=torch.long)
    n, n_classes = logits.shape
    if targets.shape != (n,):
        raise ValueError(f"{targets.numel()} targets for {n} rows of logits")
    if n == 0:
        raise ValueError("classification needs at least one sample")
    hits = classification_hits(logits, targets, (1, 5) if n_classes >= 5 else (1,))
    metrics = {f"{prefix}acc{k}": hit_rate(h) for k, h in hits.items()}
    metrics[f"{prefix}mean_per_class_recall"] = mean_per_class_recall(logits.float().argmax(dim=1), targets)
    metrics[f"chance_{prefix}acc1"] = 1.0 / n_classes
    if n_classes >= 5:
        metrics[f"chance_{prefix}acc5"] = 5.0 / n_classes
    metrics[f"chance_{prefix}mean_per_class_recall"] = 1.0 / n_classes
    return metrics


def classification_hits(logits: torch.Tensor, targets: Sequence[int] | torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, torch.Tensor]:
    """Per sample and k: whether its class is among the k classes scored highest (``[N]`` bool)."""
    targets = torch.as_tensor(targets, dtype=torch.long)
    ranked = logits.float().topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit_at = ranked == targets[:, None]
    return {k: hit_at[:, :k].any(dim=1) for k in ks}


def mean_per_class_recall(pred: torch.Tensor, targets: torch.Tensor) -> float:
    """Recall averaged over the classes present in ``targets`` (sklearn's balanced accuracy)."""
    classes = torch.unique(targets)
    recalls = [(pred[targets == c] == c).float().mean().item() for c in classes]
    return float(np.mean(recalls))
