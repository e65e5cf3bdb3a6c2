"""Per-query hits: the metrics that are a share of queries that hit (recall@k, accuracy@k),
kept query by query so that two models can be compared on the same queries (the promotion
gate's paired bootstrap). Every such metric a task reports is the ``score`` of its hits.

Light on purpose (no torch or numpy at import): the task registry, which the command line
imports, names the metrics defined here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

RECALL_KS = (1, 5, 10)  # CLIP_benchmark's recall_k_list
ACCURACY_KS = (1, 5)


def recall_names(k: int) -> tuple[str, str, str]:
    """text -> image, image -> text, and their mean, at ``k``."""
    return f"image_retrieval_recall@{k}", f"text_retrieval_recall@{k}", f"mean_recall@{k}"


def accuracy_name(k: int, prefix: str = "") -> str:
    return f"{prefix}acc{k}"


RECALL_METRICS = tuple(name for k in RECALL_KS for name in recall_names(k))
ACCURACY_METRICS = tuple(accuracy_name(k) for k in ACCURACY_KS)


def hit_rate(hits: torch.Tensor) -> float:
    """The share of queries that hit: every recall and accuracy here is one of these."""
    return hits.float().mean().item()


def mean_recall(image_retrieval: float, text_retrieval: float) -> float:
    return (image_retrieval + text_retrieval) / 2


@dataclass(frozen=True)
class QueryHits:
    """One model's hit (True/False) per query of one metric, per direction of the metric
    (mean_recall has two), with the image each query belongs to (``units``, indices below
    ``n_units``): a text->image query belongs to its text's image, an image query to itself."""

    metric: str
    hits: tuple[torch.Tensor, ...]
    units: tuple[np.ndarray, ...]
    n_units: int

    @property
    def score(self) -> float:
        """The metric: the hit rate, or for two directions the mean of their hit rates."""
        rates = [hit_rate(h) for h in self.hits]
        return mean_recall(*rates) if len(rates) == 2 else rates[0]

    @property
    def n_queries(self) -> int:
        return sum(len(h) for h in self.hits)
