"""What a text mode provides: the text tower of a FlameModel (``TextMode.tower``) and the text
side of a training (``TextMode.training_side``). FlameModel, the loop and the step know
nothing else about the text side."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch

from flame.config import RAW_FACET_SET, FlameConfig, TrainConfig
from flame.data.plan import ShardPlan
from flame.data.shards import ShardSample
from flame.text_modes.facet_pooling import MEAN_THEN_NORMALIZE


class TextTower(Protocol):
    """A FlameModel's ``text``: the frozen LLM it was trained against, or a trained text transformer."""

    def encode(self, texts: list[str], facet_set: str = RAW_FACET_SET,
               pooling: str = MEAN_THEN_NORMALIZE) -> torch.Tensor:
        """Texts -> L2-normalised ``[N, D]``."""


class ShardTexts(Protocol):
    """A text mode's texts of a sample: ``for_shard(path)`` returns a function giving each
    sample's K texts as one tensor (``[K, D]`` embeddings, ``[K, L]`` token ids, ...) or None
    when the sample has none (counted as missing). Called inside the DataLoader worker."""

    def for_shard(self, path: Path) -> Callable[[ShardSample], torch.Tensor | None]: ...


@dataclass(frozen=True)
class ModelText:
    """What the FlameModel of a training holds on its text side (its ``ModelConfig`` records it)."""

    embed_dim: int
    text_config: dict
    # What cached text embeddings of this model are keyed by; None: the text tower is trained.
    fingerprint: str | None


class TrainingSide(Protocol):
    """The text side of one training on one shard folder."""

    # What a training is tied to (part of its identity, ``flame.train.identity``).
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


@dataclass(frozen=True)
class TextMode:
    """One ``text.mode``, registered by ``name`` in ``flame.text_modes``."""

    name: str
    # (text config, text fingerprint) of a ModelConfig -> the FlameModel's text tower.
    tower: Callable[[dict, str | None], TextTower]
    # (config, shards folder, embeddings folder or None) -> the text side of a training; cheap: no LLM is loaded.
    training_side: Callable[[FlameConfig, Path, Path | None], TrainingSide]
