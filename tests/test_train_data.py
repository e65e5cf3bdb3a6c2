"""The training data stream: shards joined with the store, split over DataLoader
workers and ranks, reproducible per (seed, epoch)."""

from __future__ import annotations

import io
import tarfile

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from flame.data.shards import list_shards
from flame.errors import FlameError
from flame.text.store import EmbeddingStore
from flame.train.batches import ShardBatches, shards_of_rank
from flame.text_modes.frozen_llm import StoreTexts
from tests.fixtures.train import tiny_train_config


def _dataset(shards, store, **kw):
    config = tiny_train_config()
    args = dict(batch_size=8, positives=2, crop_scale=(0.9, 1.0), seed=0, shuffle_buffer=16)
    return ShardBatches(shards, StoreTexts(store), config.image, **{**args, **kw})


def _epoch(dataset, epoch, workers):
    dataset.set_epoch(epoch)
    return [b for b in DataLoader(dataset, batch_size=None, num_workers=workers) if b["keys"]]


@pytest.mark.slow
def test_two_workers_read_every_sample_once_per_epoch(sample_shards, synthetic_store):
    shards = list_shards(sample_shards)
    batches = _epoch(_dataset(shards, synthetic_store), 0, workers=2)
    keys = [k for b in batches for k in b["keys"]]
    assert len(keys) == len(set(keys)) == 64
    assert all(b["pixels"].shape == (8, 3, 32, 32) and b["texts"].shape == (8, 2, 32) for b in batches)


def test_epoch_is_reproducible_and_epochs_differ(sample_shards, synthetic_store):
    shards = list_shards(sample_shards)[:1]
    dataset = _dataset(shards, synthetic_store)
    first, again, other = _epoch(dataset, 0, 0), _epoch(dataset, 0, 0), _epoch(dataset, 1, 0)
    assert [b["keys"] for b in first] == [b["keys"] for b in again]
    for a, b in zip(first, again):
        assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["texts"], b["texts"])
    assert [b["keys"] for b in first] != [b["keys"] for b in other]


def test_positives_are_distinct_rows_of_the_sample_embeddings(sample_shards, synthetic_store):
    shards = list_shards(sample_shards)[:1]
    store = EmbeddingStore.open(synthetic_store)
    keys, table = store.read("00000")
    rows = dict(zip(keys, table.float()))
    for batch in _epoch(_dataset(shards, synthetic_store, positives=3), 0, 0):
        for key, texts in zip(batch["keys"], batch["texts"].float()):
            matches = [int(torch.isclose(rows[key], t).all(dim=-1).nonzero()) for t in texts]
            assert len(set(matches)) == 3


def test_ranks_get_disjoint_shards(sample_shards):
    shards = list_shards(sample_shards)
    assert shards_of_rank(shards, 0, 2) == shards[:1] and shards_of_rank(shards, 1, 2) == shards[1:]
    with pytest.raises(FlameError, match="2 shards for 3 training processes"):
        shards_of_rank(shards, 0, 3)


def test_an_oversized_image_is_a_counted_skip_not_a_crash(sample_shards, synthetic_store, tmp_path):
    bomb = io.BytesIO()
    Image.new("1", (14000, 14000)).save(bomb, format="PNG")  # 196 M pixels in 24 kB: a decompression bomb
    shard = tmp_path / "00000.tar"
    replaced = None
    with tarfile.open(sample_shards / "00000.tar") as tin, tarfile.open(shard, "w") as tout:
        for member in tin:
            data = tin.extractfile(member).read()
            if replaced is None and member.name.endswith(".jpg"):
                replaced, data = member.name, bomb.getvalue()
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data))
    batches = list(DataLoader(_dataset([shard], synthetic_store), batch_size=None, num_workers=0))
    assert sum(b["skipped_corrupt"] for b in batches) == 1
    assert sum(len(b["keys"]) for b in batches) == 24  # 31 readable images -> 3 full batches of 8
    assert replaced.split(".")[0] not in {k for b in batches for k in b["keys"]}

    # the limit is image.max_pixels: below every image's size, every image is skipped
    image = tiny_train_config().image.model_copy(update={"max_pixels": 100})
    dataset = ShardBatches([sample_shards / "00000.tar"], StoreTexts(synthetic_store), image, batch_size=8,
                           positives=2, crop_scale=(0.9, 1.0), seed=0, shuffle_buffer=16)
    batches = list(DataLoader(dataset, batch_size=None, num_workers=0))
    assert sum(b["skipped_corrupt"] for b in batches) == 32 and not any(b["keys"] for b in batches)
