"""Training data of the CLIP baseline: image shards with their raw captions, tokenized.

The same shards, shuffling, crops and batching as ``ShardBatches``; in place of the
K stored embeddings an image has its K captions as token ids ``[K, L]``, of which
``m`` are drawn per step exactly as the FLAME mode draws m of K embeddings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from flame.data.shards import iter_shard, list_shards, shard_name
from flame.errors import FlameError
from flame.model.clip_text import tokenize
from flame.train.data import ShardBatches, ShardPlan

log = logging.getLogger(__name__)


def plan_caption_shards(shards_dir: str | Path, caption_field: str) -> ShardPlan:
    """Count the samples of every shard that have a caption in ``caption_field``; the others are skipped."""
    shards = list_shards(shards_dir)
    plan = ShardPlan(shards=shards, usable={})
    for path in shards:
        usable = 0
        for sample in iter_shard(path, with_images=False):
            if any(c.strip() for c in sample.captions(caption_field)):
                usable += 1
            else:
                plan.missing += 1
                if len(plan.missing_examples) < 5:
                    plan.missing_examples.append(f"{shard_name(path)}/{sample.key}")
        plan.usable[shard_name(path)] = usable
    if plan.missing:
        log.warning("skipping %d samples without a %r caption (e.g. %s)",
                    plan.missing, caption_field, ", ".join(plan.missing_examples))
    if plan.total == 0:
        raise FlameError(f"no sample of {shards_dir} has a caption in field {caption_field!r}")
    return plan


class CaptionBatches(ShardBatches):
    """Yields ``ShardBatches`` dicts whose ``texts`` are token ids ``[B, m, context_length]`` (int64)."""

    def __init__(self, shards: list[Path], image, *, caption_field: str, context_length: int, **kwargs):
        super().__init__(shards, None, image, **kwargs)
        self.caption_field = caption_field
        self.context_length = context_length

    def _open_store(self):
        return None

    def _samples(self, shards, store, rng: np.random.Generator, counts: dict):
        """(sample, token ids [K', L]) through the same seeded shuffle buffer as the FLAME mode."""
        buffer = []
        for idx in rng.permutation(len(shards)):
            for sample in iter_shard(shards[idx]):
                captions = [c for c in sample.captions(self.caption_field) if c.strip()]
                if not captions:
                    counts["missing"] += 1
                    continue
                if len(captions) < self.positives:  # too few captions: repeat them so every image has m positives
                    captions = [captions[i % len(captions)] for i in range(self.positives)]
                buffer.append((sample, tokenize(captions, self.context_length)))
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(int(rng.integers(len(buffer))))
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))
