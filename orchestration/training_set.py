"""Exactly the data a training reads: the registered data shards, each as its own latest
materialisations recorded it (shard digest, embedding store), linked into one folder per
training so the trainer never sees a stale or unregistered shard and DVC can version
precisely that folder."""

import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flame.config import FlameConfig
from flame.errors import FlameError
from flame.files import link_or_copy
from orchestration.lineage import latest_record, metadata_of
from orchestration.partitions import DATA_SHARDS

FINGERPRINTED_SECTIONS = ("text", "image", "train", "data")


@dataclass(frozen=True)
class ShardInput:
    key: str
    shard: Path
    digest: str  # sha256 of the shard's tar, recorded by image_shards
    store: Path  # the embedding store folder caption_embeddings wrote
    store_fingerprint: str


@dataclass(frozen=True)
class TrainingSet:
    root: Path
    shards: Path
    store: Path


def text_config_digest(config: FlameConfig) -> str:
    """What caption_embeddings records, so training can tell embeddings of another text config."""
    from flame.text.store import fingerprint_of

    return fingerprint_of(config.text.model_dump(mode="json"))


def training_inputs(instance, config: FlameConfig) -> list[ShardInput]:
    """Every registered data shard, downloaded and embedded with the current text config; the
    error lists each shard that is not, and why."""
    keys = sorted(instance.get_dynamic_partitions(DATA_SHARDS.name))
    if not keys:
        raise FlameError("no data shards registered yet: turn on the new_manifest sensor (it registers "
                         "orchestration.manifests) or run `flame demo`")
    text = text_config_digest(config)
    inputs, problems = [], {}
    for key in keys:
        shard_record = latest_record(instance, "image_shards", key)
        embed_record = latest_record(instance, "caption_embeddings", key)
        if shard_record is None:
            problems[key] = "not downloaded (materialise image_shards)"
            continue
        if embed_record is None:
            problems[key] = "not embedded (materialise caption_embeddings)"
            continue
        shard, embedded = metadata_of(shard_record), metadata_of(embed_record)
        if embedded.get("shard_sha256") != shard["shard_sha256"]:
            problems[key] = "embedded from another download of it (materialise caption_embeddings)"
        elif embedded.get("text_config") != text:
            problems[key] = "embedded with another text configuration (materialise caption_embeddings)"
        elif not Path(shard["shard"]).is_file() or Path(shard["shard"]).stat().st_size != shard["shard_bytes"]:
            problems[key] = f"{shard['shard']} is missing or changed since it was downloaded (materialise image_shards)"
        else:
            inputs.append(ShardInput(key, Path(shard["shard"]), shard["shard_sha256"], Path(embedded["store"]),
                                     embedded["fingerprint"]))
    if problems:
        listed = "; ".join(f"{k}: {why}" for k, why in problems.items())
        raise FlameError(f"{len(problems)} of {len(keys)} data shards are not ready for training: {listed}")
    return inputs


def training_fingerprint(config: FlameConfig, inputs: list[ShardInput]) -> str:
    """Same configuration and same data -> same id (and checkpoint folder, so a re-run resumes)."""
    digest = hashlib.sha256()
    dumped = config.model_dump(mode="json")
    digest.update(json.dumps({k: dumped[k] for k in FINGERPRINTED_SECTIONS}, sort_keys=True).encode())
    for item in inputs:
        digest.update(f"{item.key}:{item.digest}:{item.store_fingerprint}\n".encode())
    return digest.hexdigest()[:12]


def link_training_set(inputs: list[ShardInput], root: Path) -> TrainingSet:
    """``root/shards/<key>.tar`` and ``root/embeddings/<store>/`` for exactly ``inputs``; built
    aside and renamed into place, and reused when it exists (its name is the training id)."""
    from flame.text.store import META_FILE, EmbeddingStore

    fingerprints = {i.store_fingerprint for i in inputs}
    if len(fingerprints) != 1:
        raise FlameError(f"data shards were embedded into different stores {sorted(fingerprints)}; "
                         "re-materialise caption_embeddings so they share one")
    (fingerprint,) = fingerprints
    final = TrainingSet(root, root / "shards", root / "embeddings" / fingerprint)
    if root.is_dir():
        return final
    building = root.with_name(f".{root.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    (building / "shards").mkdir(parents=True)
    (building / "embeddings" / fingerprint).mkdir(parents=True)
    stores = {path: EmbeddingStore.open(path) for path in {i.store for i in inputs}}
    for item in inputs:
        embedded = stores[item.store].shard_path(item.key)
        link_or_copy(item.shard, building / "shards" / f"{item.key}.tar")
        link_or_copy(embedded, building / "embeddings" / fingerprint / embedded.name)
    shutil.copyfile(stores[inputs[0].store].path / META_FILE, building / "embeddings" / fingerprint / META_FILE)
    os.replace(building, root)
    return final


@contextmanager
def exclusive(lock_file: Path, owner: str, what: str):
    """Hold ``lock_file`` for the block; a second holder is refused naming the first."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise FlameError(f"{what} is in use by {handle.read().strip() or 'another process'} ({lock_file})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(owner)
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
