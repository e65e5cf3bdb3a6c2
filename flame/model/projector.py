"""The MLP that maps image tokens into the frozen LLM's hidden size."""

from __future__ import annotations

from torch import nn


class MLPProjector(nn.Sequential):
    """Linear -> GELU -> Linear -> LayerNorm, applied to every token.

    ``hidden`` defaults to ``out_dim``. The reference's hidden width is
    ``max(out_dim, 4096)``, the same for the paper's 5120-wide LLM."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None):
        hidden = hidden or out_dim
        super().__init__(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, out_dim),
            nn.LayerNorm(out_dim),
        )
