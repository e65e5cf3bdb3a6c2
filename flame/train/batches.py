"""Training batches from img2dataset shards, whatever the text side (see ``text_modes``).

``plan_shards`` counts, before training, which samples of every shard a text mode can use
and what each rank and DataLoader worker will read. ``ShardBatches`` is an
IterableDataset that yields whole batches: each DataLoader worker of each rank reads its
own shards (every shard once per epoch per rank), shuffles through a bounded buffer,
decodes and crops the image, and picks ``m`` of the K texts its text mode gives the
sample. All randomness derives from (seed, epoch, key) or (seed, epoch, rank, worker), so
an epoch is reproducible whatever the timing.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from flame.config import ImageConfig
from flame.data.images import read_image
from flame.data.shards import ShardSample, iter_shard, list_shards, shard_name
from flame.errors import FlameError
from flame.digest import sha256_file
from flame.model.transforms import train_transform

log = logging.getLogger(__name__)


@dataclass
class ShardPlan:
    shards: list[Path]
    usable: dict[str, int]  # shard name -> samples with texts (their text mode can use)
    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # shard name -> sha256 of its tar

    @property
    def total(self) -> int:
        return sum(self.usable.values())


def plan_shards(shards_dir: str | Path, usable: Callable[[str], Callable[[ShardSample], bool]]) -> ShardPlan:
    """Every shard of ``shards_dir`` with its sha256 and its count of samples that
    ``usable(shard name)(sample)`` accepts; the others are counted as missing (with a few examples)."""
    shards = list_shards(shards_dir)
    plan = ShardPlan(shards=shards, usable={})
    for path in shards:
        name = shard_name(path)
        plan.digests[name] = sha256_file(path)
        accepts = usable(name)
        count = 0
        for sample in iter_shard(path, with_images=False):
            if accepts(sample):
                count += 1
            else:
                plan.missing += 1
                if len(plan.missing_examples) < 5:
                    plan.missing_examples.append(f"{name}/{sample.key}")
        plan.usable[name] = count
    return plan


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


class ShardTexts(Protocol):
    """A text mode's texts of a sample: ``for_shard(path)`` returns a function giving each
    sample's K texts as one tensor (``[K, D]`` embeddings, ``[K, L]`` token ids, ...) or None
    when the sample has none (counted as missing). Called inside the DataLoader worker."""

    def for_shard(self, path: Path) -> Callable[[ShardSample], torch.Tensor | None]: ...


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
