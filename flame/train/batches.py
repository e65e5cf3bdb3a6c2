"""Training batches from img2dataset shards, whatever the text side (see ``flame.text_modes``).

``steps_per_epoch`` counts, from the plan of the shards (``flame.data.plan``), what each
rank and DataLoader worker will read. ``ShardBatches`` is an IterableDataset that yields
whole batches: each DataLoader worker of each rank reads its own shards (every shard once
per epoch per rank), shuffles through a bounded buffer, decodes and crops the image, and
picks ``m`` of the K texts its text mode gives the sample. All randomness derives from
(seed, epoch, key) or (seed, epoch, rank, worker), so an epoch is reproducible whatever the
timing.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from flame.config import ImageConfig
from flame.data.images import read_image
from flame.data.plan import ShardPlan
from flame.data.shards import ShardSample, iter_shard, shard_name
from flame.errors import FlameError
from flame.model.transforms import train_transform
from flame.text_modes.base import ShardTexts

log = logging.getLogger(__name__)


def shards_of_rank(shards: list[Path], rank: int, world_size: int) -> list[Path]:
    if len(shards) < world_size:
        raise FlameError(
            f"{len(shards)} shards for {world_size} training processes: each process needs at least one "
            "shard; download with a smaller data.number_sample_per_shard"
        )
    return shards[rank::world_size]


def worker_split(shards: list[Path], num_workers: int) -> list[list[Path]]:
    return [shards[w::num_workers] for w in range(max(1, num_workers))]


def steps_per_epoch(plan: ShardPlan, world_size: int, num_workers: int, batch_size: int) -> int:
    """Full batches every rank can produce (workers batch their own samples; the remainder is dropped)."""
    per_rank = []
    for rank in range(world_size):
        mine = shards_of_rank(plan.shards, rank, world_size)
        per_rank.append(sum(
            sum(plan.usable[shard_name(p)] for p in part) // batch_size
            for part in worker_split(mine, num_workers)
        ))
    return min(per_rank)


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode("utf-8"))])


class ShardBatches(IterableDataset):
    """Yields dicts ``pixels [B,3,S,S]``, ``texts [B,m,...]``, ``keys``, and the samples
    skipped since the previous batch (``skipped_corrupt``, ``skipped_missing``). A worker's
    last yield may be an empty batch carrying only its skip counts."""

    def __init__(self, shards: list[Path], texts: ShardTexts, image: ImageConfig, *,
                 batch_size: int, positives: int, crop_scale: tuple[float, float], seed: int,
                 shuffle_buffer: int, rank: int = 0):
        self.shards = list(shards)
        self.texts = texts
        self.image = image
        self.batch_size = batch_size
        self.positives = positives
        self.crop_scale = tuple(crop_scale)
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_shards(self) -> tuple[list[Path], int]:
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        return worker_split(self.shards, workers)[wid], wid

    def _samples(self, shards: list[Path], rng: np.random.Generator, counts: dict):
        """(sample, texts[K, ...]) through a seeded shuffle buffer."""
        buffer = []
        for idx in rng.permutation(len(shards)):
            texts_of = self.texts.for_shard(shards[idx])
            for sample in iter_shard(shards[idx]):
                texts = texts_of(sample)
                if texts is None:
                    counts["missing"] += 1
                    continue
                buffer.append((sample, texts))
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(int(rng.integers(len(buffer))))
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))

    def _decode(self, sample: ShardSample, texts: torch.Tensor):
        rng = sample_rng(self.seed, self.epoch, sample.key)
        if sample.image is None:
            return None
        try:
            pixels = train_transform(read_image(sample.image, self.image.max_pixels), self.image, self.crop_scale, rng)
        except (OSError, ValueError) as exc:
            log.debug("skipping undecodable image %s/%s: %s", sample.shard, sample.key, exc)
            return None
        k = texts.shape[0]
        pick = rng.choice(k, size=self.positives, replace=False) if self.positives < k else np.arange(k)
        return pixels, texts[torch.from_numpy(np.sort(pick))]

    def __iter__(self):
        shards, wid = self._my_shards()
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, wid])
        counts = {"missing": 0, "corrupt": 0}
        pixels, texts, keys = [], [], []
        for sample, sample_texts in self._samples(shards, rng, counts):
            decoded = self._decode(sample, sample_texts)
            if decoded is None:
                counts["corrupt"] += 1
                continue
            pixels.append(decoded[0])
            texts.append(decoded[1])
            keys.append(sample.key)
            if len(keys) == self.batch_size:
                yield self._batch(pixels, texts, keys, counts)
                pixels, texts, keys = [], [], []
        if counts["missing"] or counts["corrupt"]:
            yield self._batch([], [], [], counts)

    def _batch(self, pixels, texts, keys, counts) -> dict:
        batch = {
            "pixels": torch.stack(pixels) if pixels else torch.empty(0),
            "texts": torch.stack(texts) if texts else torch.empty(0),
            "keys": list(keys),
            "skipped_corrupt": counts["corrupt"],
            "skipped_missing": counts["missing"],
        }
        counts["corrupt"] = counts["missing"] = 0
        return batch
