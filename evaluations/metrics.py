"""Metrics on precomputed, L2-normalised embeddings, named as in CLIP_benchmark.

Retrieval follows CLIP_benchmark's convention: ``image_retrieval_recall@k`` is the share
of texts whose image is among the k images scored highest for that text;
``text_retrieval_recall@k`` is the share of images with at least one of their texts
among the k texts scored highest for that image. Chance levels are computed exactly for
the same gallery sizes, so "above chance" is checkable from the result alone.

Every recall and accuracy is the ``score`` of its per-query hits (``evaluations.hits``),
which a ``Scores`` carries beside the metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from evaluations.hits import ACCURACY_KS, RECALL_KS, QueryHits, accuracy_name, mean_recall, recall_names


@dataclass(frozen=True)
class Scores:
    """Metrics (with their chance levels), and the per-query hits of those that are a share of queries."""

    metrics: dict[str, float]
    hits: dict[str, QueryHits]


def _check_embeddings(name: str, emb: torch.Tensor) -> None:
    if emb.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {tuple(emb.shape)}")
    if not torch.isfinite(emb).all():
        raise ValueError(f"{name} contains NaN or inf")


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
) -> dict[str, QueryHits]:
    """Per metric and query, whether it hit: ``image_retrieval_recall@k`` per text (the text's
    image among its top k images), ``text_retrieval_recall@k`` per image (one of the image's
    texts among its top k texts), ``mean_recall@k`` both."""
    index = _retrieval_index(image_emb, text_emb, text_to_image)
    n_images, n_texts = image_emb.shape[0], text_emb.shape[0]
    scores = text_emb.float() @ image_emb.float().T  # [texts, images]
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(n_texts), index] = True
    text_units, image_units = index.numpy(), np.arange(n_images)

    hits: dict[str, QueryHits] = {}
    for k in ks:
        t2i_name, i2t_name, mean_name = recall_names(k)
        top_images = scores.topk(min(k, n_images), dim=1).indices  # per text
        top_texts = scores.T.topk(min(k, n_texts), dim=1).indices  # per image
        t2i = QueryHits(t2i_name, (positives.gather(1, top_images).any(dim=1),), (text_units,), n_images)
        i2t = QueryHits(i2t_name, (positives.T.gather(1, top_texts).any(dim=1),), (image_units,), n_images)
        hits[t2i_name], hits[i2t_name] = t2i, i2t
        hits[mean_name] = QueryHits(mean_name, t2i.hits + i2t.hits, t2i.units + i2t.units, n_images)
    return hits


def score_retrieval(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: Sequence[int] | torch.Tensor,
                    ks: Sequence[int] = RECALL_KS) -> Scores:
    """R@k both ways, their mean, and the chance level of each, for texts pointing at images."""
    hits = retrieval_hits(image_emb, text_emb, text_to_image, ks)
    index = torch.as_tensor(text_to_image, dtype=torch.long)
    n_images, n_texts = image_emb.shape[0], text_emb.shape[0]
    texts_per_image = torch.bincount(index, minlength=n_images)

    metrics: dict[str, float] = {}
    for k in ks:
        k_img, k_txt = min(k, n_images), min(k, n_texts)
        t2i_chance = k_img / n_images
        i2t_chance = float(np.mean([_chance_any_hit(n_texts, int(c), k_txt) for c in texts_per_image]))
        names = recall_names(k)
        for name in names:
            metrics[name] = hits[name].score
        for name, chance in zip(names, (t2i_chance, i2t_chance, mean_recall(t2i_chance, i2t_chance))):
            metrics[f"chance_{name}"] = chance
    return Scores(metrics, hits)


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: Sequence[int] | torch.Tensor,
                      ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """``score_retrieval``'s metrics."""
    return score_retrieval(image_emb, text_emb, text_to_image, ks).metrics


def _chance_any_hit(n_items: int, n_positive: int, k: int) -> float:
    """P(at least one of n_positive items is among k drawn without replacement from n_items)."""
    if k >= n_items:
        return 1.0
    return 1.0 - math.comb(n_items - n_positive, k) / math.comb(n_items, k)


def classification_hits(logits: torch.Tensor, targets: Sequence[int] | torch.Tensor, prefix: str = "") -> dict[str, QueryHits]:
    """Per ``acc@k`` (k of ``ACCURACY_KS`` up to the number of classes) and sample: whether
    its class is among the k classes scored highest."""
    targets = torch.as_tensor(targets, dtype=torch.long)
    n, n_classes = logits.shape
    ks = [k for k in ACCURACY_KS if k <= n_classes]
    hit_at = logits.float().topk(max(ks), dim=1).indices == targets[:, None]
    units = (np.arange(n),)
    return {accuracy_name(k, prefix): QueryHits(accuracy_name(k, prefix), (hit_at[:, :k].any(dim=1),), units, n) for k in ks}


def score_classification(logits: torch.Tensor, targets: Sequence[int] | torch.Tensor, prefix: str = "") -> Scores:
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
    hits = classification_hits(logits, targets, prefix)
    metrics = {name: h.score for name, h in hits.items()}
    metrics[f"{prefix}mean_per_class_recall"] = mean_per_class_recall(logits.float().argmax(dim=1), targets)
    for k in ACCURACY_KS:
        if k <= n_classes:
            metrics[f"chance_{accuracy_name(k, prefix)}"] = k / n_classes
    metrics[f"chance_{prefix}mean_per_class_recall"] = 1.0 / n_classes
    return Scores(metrics, hits)


def classification_metrics(logits: torch.Tensor, targets: Sequence[int] | torch.Tensor, prefix: str = "") -> dict[str, float]:
    """``score_classification``'s metrics."""
    return score_classification(logits, targets, prefix).metrics


def mean_per_class_recall(pred: torch.Tensor, targets: torch.Tensor) -> float:
    """Recall averaged over the classes present in ``targets`` (sklearn's balanced accuracy)."""
    classes = torch.unique(targets)
    recalls = [(pred[targets == c] == c).float().mean().item() for c in classes]
    return float(np.mean(recalls))
