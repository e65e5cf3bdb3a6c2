"""How a facet set's K hidden states of the frozen LLM become one text embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flame.errors import FlameError

MEAN_THEN_NORMALIZE = "mean_then_normalize"
NORMALIZE_THEN_MEAN = "normalize_then_mean"


def pool_facets(per_facet: torch.Tensor, pooling: str = MEAN_THEN_NORMALIZE) -> torch.Tensor:
    """``[N, K, D]`` facet hidden states -> L2-normalised ``[N, D]``.

    ``mean_then_normalize`` is the reference's evaluation (average the raw states, then
    normalise); ``normalize_then_mean`` first puts every facet on the unit sphere, as the
    stored training targets are."""
    if pooling == MEAN_THEN_NORMALIZE:
        return F.normalize(per_facet.mean(dim=1), dim=-1)
    if pooling == NORMALIZE_THEN_MEAN:
        return F.normalize(F.normalize(per_facet, dim=-1).mean(dim=1), dim=-1)
    raise FlameError(f"unknown facet pooling {pooling!r}; known: {MEAN_THEN_NORMALIZE}, {NORMALIZE_THEN_MEAN}")
