"""The CLIP baseline's text mode: the same shards, crops and batching, but each image's K
texts are its raw captions as token ids ``[K, L]``, and the text transformer that reads
them is trained with the image tower (``m`` of the K are drawn per step, as in FLAME)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch

from flame.config import FlameConfig, TrainConfig
from flame.data.shards import ShardSample
from flame.errors import FlameError
from flame.model.clip_text import clip_text_config, clip_text_identity, tokenize
from flame.train.batches import ShardPlan, plan_shards
from flame.train.text_modes.base import ModelText

log = logging.getLogger(__name__)


def _captions(sample: ShardSample, field: str) -> list[str]:
    return [c for c in sample.captions(field) if c.strip()]


class CaptionTokens:
    def __init__(self, field: str, context_length: int, positives: int):
        self.field, self.context_length, self.positives = field, context_length, positives

    def for_shard(self, path: Path) -> Callable[[ShardSample], torch.Tensor | None]:
        def tokens(sample: ShardSample) -> torch.Tensor | None:
            captions = _captions(sample, self.field)
            if not captions:
                return None
            if len(captions) < self.positives:  # too few captions: repeat them so every image has m positives
                captions = [captions[i % len(captions)] for i in range(self.positives)]
            return tokenize(captions, self.context_length)

        return tokens


class ClipMode:
    name = "clip"

    def __init__(self, config: FlameConfig, shards_dir: Path):
        self.config = config
        self.clip = config.clip_text
        self.shards_dir = shards_dir
        self.text_fingerprint = clip_text_identity(self.clip)
        self.source_fingerprint = f"captions:{self.clip.caption_field}"
        self.source = f"the {self.clip.caption_field!r} captions of {shards_dir}"

    def check(self, train: TrainConfig) -> None:
        pass  # any positives_per_image: an image with fewer captions repeats them

    def plan(self, train: TrainConfig) -> ShardPlan:
        field = self.clip.caption_field
        plan = plan_shards(self.shards_dir, lambda shard: lambda sample: bool(_captions(sample, field)))
        if plan.missing:
            log.warning("skipping %d samples without a %r caption (e.g. %s)",
                        plan.missing, field, ", ".join(plan.missing_examples))
        if plan.total == 0:
            raise FlameError(f"no sample of {self.shards_dir} has a caption in field {field!r}")
        return plan

    def texts(self, train: TrainConfig) -> CaptionTokens:
        return CaptionTokens(self.clip.caption_field, self.clip.context_length, train.positives_per_image)

    def model_text(self) -> ModelText:
        # No fingerprint: the text tower is trained, so no cached text embedding fits it.
        return ModelText(self.clip.embed_dim, clip_text_config(self.config), None)

    def features(self, forward, pixels: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, m, length = texts.shape
        image_features, text_features = forward(pixels, texts.reshape(b * m, length))
        return image_features, text_features.float().reshape(b, m, -1)
