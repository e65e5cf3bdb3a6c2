"""What a text mode provides to the training loop; the loop and the step know nothing else
about the text side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from flame.config import TrainConfig
from flame.train.batches import ShardPlan, ShardTexts


@dataclass(frozen=True)
class ModelText:
    """How the FlameModel's text tower is built and recorded in its checkpoint."""

    embed_dim: int
    text_config: dict
    # What cached text embeddings of this model are keyed by; None: the text tower is trained.
    fingerprint: str | None


class TextMode(Protocol):
    name: str
    # What a training is tied to: resuming against another identity is refused.
    text_fingerprint: str
    source_fingerprint: str
    # Where the texts come from, for error messages.
    source: str

    def check(self, train: TrainConfig) -> None:
        """Refuse settings this mode cannot train with (a clear ``FlameError``)."""

    def plan(self, train: TrainConfig) -> ShardPlan:
        """Which samples of the shards have texts; applies the mode's missing-text policy."""

    def texts(self, train: TrainConfig) -> ShardTexts:
        """The per-sample texts ``ShardBatches`` draws the ``m`` positives from."""

    def model_text(self) -> ModelText: ...

    def features(self, forward: Callable, pixels: torch.Tensor,
                 texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image features ``[B, D]`` and text features ``[B, m, D]`` of one batch, through
        ``forward`` (the model or its DDP wrapper, so every trained parameter is in one pass)."""

