"""Training data: img2dataset shards joined with the embedding store by sample key.

``plan_shards`` checks every shard against the store before training (missing
embeddings are a clear error or a counted skip) and counts what each rank and
DataLoader worker will read. ``ShardBatches`` is an IterableDataset that yields whole
batches: each DataLoader worker of each rank reads its own shards (every shard once
per epoch per rank), shuffles through a bounded buffer, decodes and crops the image,
and picks ``m`` of the K text embeddings. All randomness derives from (seed, epoch,
key) or (seed, epoch, rank, worker), so an epoch is reproducible whatever the timing.
"""

from __future__ import annotations

import io
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import IterableDataset, get_worker_info

from flame.config import ImageConfig
from flame.data.shards import iter_shard, list_shards, shard_name
from flame.errors import FlameError
from flame.model.transforms import train_transform
from flame.text.store import EmbeddingStore

log = logging.getLogger(__name__)


@dataclass
class ShardPlan:
    shards: list[Path]
    usable: dict[str, int]  # shard name -> samples with embeddings
    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.usable.values())


def plan_shards(shards_dir: str | Path, store: EmbeddingStore, missing_policy: str) -> ShardPlan:
    """Match every shard's sample keys with the store; apply ``train.missing_embeddings``."""
    shards = list_shards(shards_dir)
    plan = ShardPlan(shards=shards, usable={})
    for path in shards:
        name = shard_name(path)
        known = store.lookup(name) if store.has(name) else {}
        usable = 0
        for sample in iter_shard(path, with_images=False):
            if sample.key in known:
                usable += 1
            else:
                plan.missing += 1
                if len(plan.missing_examples) < 5:
                    plan.missing_examples.append(f"{name}/{sample.key}")
        plan.usable[name] = usable
    if plan.missing and missing_policy == "error":
        raise FlameError(
            f"{plan.missing} samples in {shards_dir} have no embeddings in {store.path} "
            f"(e.g. {', '.join(plan.missing_examples)}); run `flame embed` on these shards, "
            "or set train.missing_embeddings: skip"
        )
    if plan.missing:
        log.warning("skipping %d samples without embeddings (e.g. %s)", plan.missing, ", ".join(plan.missing_examples))
    if plan.total == 0:
        raise FlameError(f"no sample of {shards_dir} has embeddings in {store.path}")
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


def _sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode("utf-8"))])


class ShardBatches(IterableDataset):
    """Yields dicts ``pixels [B,3,S,S]``, ``texts [B,m,D]`` (fp16), ``keys``, and the
    samples skipped since the previous batch (``skipped_corrupt``, ``skipped_missing``).
    A worker's last yield may be an empty batch carrying only its skip counts."""

    def __init__(self, shards: list[Path], store_path: str | Path, image: ImageConfig, *,
                 batch_size: int, positives: int, crop_scale: tuple[float, float], seed: int,
                 shuffle_buffer: int, rank: int = 0):
        self.shards = list(shards)
        self.store_path = Path(store_path) if store_path is not None else None  # None: see CaptionBatches
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

    def _open_store(self) -> EmbeddingStore:
        return EmbeddingStore.open(self.store_path)

    def _my_shards(self) -> tuple[list[Path], int]:
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        return worker_split(self.shards, workers)[wid], wid

    def _samples(self, shards: list[Path], store: EmbeddingStore, rng: np.random.Generator, counts: dict):
        """(sample, embeddings[K, D]) through a seeded shuffle buffer."""
        buffer = []
        for idx in rng.permutation(len(shards)):
            path = shards[idx]
            name = shard_name(path)
            if not store.has(name):
                rows, table = {}, None
            else:
                keys, table = store.read(name)
                rows = {k: i for i, k in enumerate(keys)}
            for sample in iter_shard(path):
                row = rows.get(sample.key)
                if row is None:
                    counts["missing"] += 1
                    continue
                buffer.append((sample, table[row]))
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(int(rng.integers(len(buffer))))
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))

    def _decode(self, sample, embeddings: torch.Tensor):
        rng = _sample_rng(self.seed, self.epoch, sample.key)
        if sample.image is None:
            return None
        try:
            with Image.open(io.BytesIO(sample.image)) as img:
                img.load()
                pixels = train_transform(img, self.image, self.crop_scale, rng)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            log.debug("skipping undecodable image %s/%s: %s", sample.shard, sample.key, exc)
            return None
        k = embeddings.shape[0]
        pick = rng.choice(k, size=self.positives, replace=False) if self.positives < k else np.arange(k)
        return pixels, embeddings[torch.from_numpy(np.sort(pick))]

    def __iter__(self):
        shards, wid = self._my_shards()
        store = self._open_store()
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, wid])
        counts = {"missing": 0, "corrupt": 0}
        pixels, texts, keys = [], [], []
        for sample, embeddings in self._samples(shards, store, rng, counts):
            decoded = self._decode(sample, embeddings)
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
