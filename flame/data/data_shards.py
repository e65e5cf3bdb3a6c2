"""Data shards: every manifest (the configured ones, plus each ``.jsonl/.csv/.tsv/.parquet`` file
that lands in the incoming folder) cut into chunks of ``data.number_sample_per_shard`` rows. One
chunk is one data shard, named ``<manifest stem>-<chunk index>``; new manifests therefore add new
data shards, and only those are downloaded and embedded. Dagster's partitions and the DVC stages
iterate over the same chunks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from flame.config import FlameConfig
from flame.data.manifest import read_rows
from flame.errors import FlameError

MANIFEST_SUFFIXES = (".jsonl", ".csv", ".tsv", ".parquet")


@dataclass(frozen=True)
class ManifestChunk:
    key: str
    source: Path
    start: int  # first row of the manifest (0-based, as read_rows returns them)
    stop: int


def manifest_stem(path: Path) -> str:
    """A name safe for keys and files: ``new batch.v2.jsonl`` -> ``new_batch_v2``."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", path.stem).strip("_") or "manifest"


def configured_manifests(config: FlameConfig) -> list[Path]:
    return [Path(m) for m in config.orchestration.manifests]


def incoming_manifests(config: FlameConfig) -> list[Path]:
    folder = Path(config.orchestration.incoming_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES and not p.name.startswith("."))


def all_manifests(config: FlameConfig) -> list[Path]:
    return configured_manifests(config) + incoming_manifests(config)


def chunks_of(path: Path, rows_per_shard: int) -> list[ManifestChunk]:
    n = len(read_rows(path))
    stem = manifest_stem(path)
    return [ManifestChunk(f"{stem}-{i // rows_per_shard:05d}", path, i, min(i + rows_per_shard, n))
            for i in range(0, n, rows_per_shard)]


def discover_chunks(config: FlameConfig, manifests: list[Path] | None = None) -> list[ManifestChunk]:
    """Every data shard of the given manifests (default: all known ones); stems must be unique."""
    manifests = all_manifests(config) if manifests is None else manifests
    seen: dict[str, Path] = {}
    chunks: list[ManifestChunk] = []
    for path in manifests:
        stem = manifest_stem(path)
        if stem in seen and seen[stem] != path:
            raise FlameError(f"manifests {seen[stem]} and {path} share the name {stem!r}; rename one")
        seen[stem] = path
        chunks.extend(chunks_of(path, config.data.number_sample_per_shard))
    return chunks


def chunk_for_key(config: FlameConfig, key: str) -> ManifestChunk:
    for chunk in discover_chunks(config):
        if chunk.key == key:
            return chunk
    known = ", ".join(str(p) for p in all_manifests(config))
    raise FlameError(f"data shard {key!r} belongs to none of the manifests ({known})")
