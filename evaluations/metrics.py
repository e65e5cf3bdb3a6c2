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


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: Sequence[int] | torch.Tensor,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    """R@k both ways, their mean, and the chance level of each, for texts pointing at images."""
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

    scores = text_emb.float() @ image_emb.float().T  # [texts, images]
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(n_texts), index] = True

    metrics: dict[str, float] = {}
    for k in ks:
        k_img, k_txt = min(k, n_images), min(k, n_texts)
        top_images = scores.topk(k_img, dim=1).indices  # per text
        hit_text = positives.gather(1, top_images).any(dim=1)
        top_texts = scores.T.topk(k_txt, dim=1).indices  # per image
        hit_image = positives.T.gather(1, top_texts).any(dim=1)
        i2t_chance = float(np.mean([_chance_any_hit(n_texts, int(c), k_txt) for c in texts_per_image]))
        t2i_chance = k_img / n_images
        metrics[f"image_retrieval_recall@{k}"] = hit_text.float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = hit_image.float().mean().item()
        metrics[f"mean_recall@{k}"] = (metrics[f"image_retrieval_recall@{k}"] + metrics[f"text_retrieval_recall@{k}"]) / 2
        metrics[f"chance_image_retrieval_recall@{k}"] = t2i_chance
        metrics[f"chance_text_retrieval_recall@{k}"] = i2t_chance
        metrics[f"chance_mean_recall@{k}"] = (t2i_chance + i2t_chance) / 2
    return metrics


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
    ranked = logits.float().topk(min(5, n_classes), dim=1).indices
    hits = ranked == targets[:, None]
    metrics = {f"{prefix}acc1": hits[:, :1].any(dim=1).float().mean().item()}
    if n_classes >= 5:
        metrics[f"{prefix}acc5"] = hits.any(dim=1).float().mean().item()
    metrics[f"{prefix}mean_per_class_recall"] = mean_per_class_recall(ranked[:, 0], targets)
    metrics[f"chance_{prefix}acc1"] = 1.0 / n_classes
    if n_classes >= 5:
        metrics[f"chance_{prefix}acc5"] = 5.0 / n_classes
    metrics[f"chance_{prefix}mean_per_class_recall"] = 1.0 / n_classes
    return metrics


def mean_per_class_recall(pred: torch.Tensor, targets: torch.Tensor) -> float:
    """Recall averaged over the classes present in ``targets`` (sklearn's balanced accuracy)."""
    classes = torch.unique(targets)
    recalls = [(pred[targets == c] == c).float().mean().item() for c in classes]
    return float(np.mean(recalls))
