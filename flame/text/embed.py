"""Embedding a dataset's captions into an EmbeddingStore, one data shard at a time.

Input: a folder of webdataset shards (``NNNNN.tar``) or one JSONL manifest (its own
single "shard", named by the file stem). Each sample gets ``K`` columns: for every
configured view (caption field x facet set), ``captions_per_sample`` captions (cycled
when a sample has fewer) times the set's facets. A shard file is the unit of work and
of resumption: a shard whose stored embeddings were computed from the same input bytes
(its recorded digest) is not recomputed unless asked; one whose input changed is.

The shards are computed in this process or by a pool of Ray workers (``text.distributor``,
``flame.text.embed_cluster``); either way this module decides what to compute and writes the
store, so both make the same store. One shard's computing is ``flame.text.embed_shard``'s.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator, Protocol

from tqdm import tqdm

from flame.config import FlameConfig, TextConfig
from flame.data.shards import list_shards, shard_name
from flame.errors import FlameError
from flame.jsonl import iter_jsonl
from flame.text.embed_shard import InputShard, ShardEmbedder, ShardResult, store_meta, text_config_key, worker_name
from flame.text.encoder import TextEncoder
from flame.text.llm import resolve_source
from flame.text.store import META_FILE, EmbeddingStore

log = logging.getLogger(__name__)


def input_shards(path: str | Path, caption_col: str | None = None) -> list[InputShard]:
    path = Path(path)
    if path.is_dir():
        return [InputShard(shard_name(p), p) for p in list_shards(path)]
    if path.is_file():
        if path.suffix not in (".jsonl", ".json"):
            raise FlameError(f"{path}: expected a folder of .tar shards or a .jsonl manifest")
        for _ in iter_jsonl(path):  # fail on bad input before the LLM is loaded
            pass
        return [InputShard(path.stem, path, caption_col)]
    raise FlameError(f"embedding input not found: {path}")


def find_store(root: str | Path, config: TextConfig) -> EmbeddingStore | None:
    """The store under ``root`` embedded with ``config`` (see ``text_config_key``), or None. Where
    several are (the same settings, an LLM whose weights changed), the one of the weights
    installed now."""
    root = Path(root)
    key = text_config_key(config)
    found = [EmbeddingStore.open(p) for p in sorted(root.glob("*")) if (p / META_FILE).is_file()] if root.is_dir() else []
    found = [s for s in found if s.meta.get("text_config") == key]
    if len(found) > 1:
        llm = resolve_source(config.llm, config.gguf_file, config.revision).identity
        found = [s for s in found if s.meta.get("fingerprint_inputs", {}).get("llm") == llm]
    if len(found) > 1:
        raise FlameError(f"{root}: several embedding stores match text configuration {key} "
                         f"({', '.join(s.fingerprint for s in found)}); remove the ones no longer wanted")
    return found[0] if found else None


ENCODING_FIELDS = ("llm", "gguf_file", "revision", "layer", "dtype", "max_tokens", "bos_token", "facet_sets")


def check_encoder_matches(encoder: TextEncoder, config: TextConfig) -> None:
    """A passed-in encoder may be reused only if it encodes exactly as ``config`` would."""
    for name in ENCODING_FIELDS:
        if getattr(encoder.config, name) != getattr(config, name):
            raise FlameError(f"the encoder was built with a different text.{name} than this configuration")


SUMMED_STATS = ("samples", "skipped_empty", "empty_captions", "truncated", "prompts", "tokens")


def _recorded_digest(store: EmbeddingStore, shard: str) -> str | None:
    """The input digest a held shard was computed from; None when absent, unrecorded or unreadable."""
    if not store.has(shard):
        return None
    try:
        return store.input_digest(shard)
    except FlameError:
        return None


def _warn_skips(summary: dict, examples: list[str], fields: list[str]) -> None:
    if summary["skipped_empty"]:
        log.warning("skipped %d sample(s) with no non-empty caption in field(s) %s (e.g. %s)",
                    summary["skipped_empty"], fields, ", ".join(examples))
    if summary["empty_captions"]:
        log.warning("ignored %d empty caption(s) (nothing but whitespace)", summary["empty_captions"])


class ShardRunner(Protocol):
    """Computes shards somewhere (this process, a pool of cluster workers) for ``embed_shards``,
    which owns the store: what to skip, the digests, the writes and the summary."""

    def store_meta(self) -> dict: ...

    def run(self, shards: list[InputShard], bar: tqdm) -> Iterator[tuple[InputShard, ShardResult]]:
        """Each of ``shards`` with its result, in the order they finish; advances ``bar`` by captions."""
        ...

    def close(self) -> None: ...


class LocalRunner:
    """Embeds the shards in this process, one after another, with one encoder."""

    def __init__(self, text_config: TextConfig, encoder: TextEncoder | None = None):
        self.text_config = text_config
        self.encoder = encoder or TextEncoder.from_config(text_config)
        check_encoder_matches(self.encoder, text_config)

    def store_meta(self) -> dict:
        return store_meta(self.encoder, self.text_config)

    def run(self, shards: list[InputShard], bar: tqdm) -> Iterator[tuple[InputShard, ShardResult]]:
        embedder = ShardEmbedder(self.encoder, self.text_config, bar)
        here = worker_name()
        for shard in shards:
            bar.set_description(f"embedding {shard.name}")
            result = embedder.embed(shard)
            result.worker = here
            yield shard, result

    def close(self) -> None:
        pass


def make_runner(text_config: TextConfig, encoder: TextEncoder | None = None, shards: int | None = None) -> ShardRunner:
    """What ``text.distributor`` names: this process (over ``encoder`` if given), or a pool of
    Ray workers that load their own, no more of them than ``shards`` to embed."""
    if text_config.distributor == "local":
        return LocalRunner(text_config, encoder)
    if encoder is not None:
        raise FlameError("text.distributor=ray: the workers load their own encoder; pass none "
                         "(or set text.distributor=local)")
    from flame.text.embed_cluster import RayRunner

    workers = text_config.workers if shards is None else max(1, min(text_config.workers, shards))
    return RayRunner(text_config, workers)


def embed_shards(
    text_config: TextConfig,
    shards: list[InputShard],
    out_dir: str | Path,
    encoder: TextEncoder | None = None,
    max_shards: int | None = None,
    progress: bool = True,
    recompute: bool = False,
    runner: ShardRunner | None = None,
) -> dict:
    """Embed ``shards`` into the store under ``out_dir`` (the one for this encoder and prompts).

    A shard is skipped when the store holds it computed from the same input (its recorded
    ``InputShard.digest``), unless ``recompute``; one whose input changed since (or whose file
    records no digest) is re-embedded and counted in ``shards_stale``. ``max_shards`` stops
    after computing that many (the rest stay for a rerun). Every shard file is written
    atomically, replacing the old one. Returns a summary with the store path and its validation,
    and which worker computed each shard (``workers``: shard -> ``<node>/<pid>``).
    The shards are computed by ``runner`` (default: ``make_runner``, over ``encoder`` where
    the distributor is local), which is closed at the end. The progress bar counts captions:
    the distinct caption texts of each shard it embeds.
    """
    start = time.perf_counter()
    runner = runner or make_runner(text_config, encoder, len(shards))
    try:
        return _embed_with(runner, text_config, shards, out_dir, max_shards, progress, recompute, start)
    finally:
        runner.close()


def _embed_with(runner: ShardRunner, text_config: TextConfig, shards: list[InputShard], out_dir: str | Path,
                max_shards: int | None, progress: bool, recompute: bool, start: float) -> dict:
    store = EmbeddingStore.create(out_dir, runner.store_meta())
    # Hashed before the shard is read: a file that changes after this is seen as stale next time.
    digests = {s.name: s.digest() for s in shards}
    recorded = {s.name: _recorded_digest(store, s.name) for s in shards}
    stale = [s.name for s in shards if store.has(s.name) and recorded[s.name] != digests[s.name]]
    missing = [s for s in shards if recompute or recorded[s.name] != digests[s.name]]
    todo = missing if max_shards is None else missing[:max_shards]
    if stale:
        log.warning("%d shard(s) changed since they were embedded: %s; re-embedding", len(stale), ", ".join(stale))
    summary = {"store": str(store.path), "fingerprint": store.fingerprint, "K": store.K, "D": store.D,
               "shards_total": len(shards), "shards_skipped": len(shards) - len(missing),
               "shards_stale": len(stale), "shards_done": 0, "captions": 0,
               **{key: 0 for key in SUMMED_STATS}, "workers": {}}
    skipped_examples: list[str] = []
    bar = tqdm(desc="embedding captions", unit="caption", disable=not progress, dynamic_ncols=True)
    embedding_start = time.perf_counter()
    try:
        for shard, result in runner.run(todo, bar):
            store.write(shard.name, result.keys, result.embeddings, result.stats, input_digest=digests[shard.name])
            summary["shards_done"] += 1
            summary["captions"] += result.stats["unique_captions"]
            summary["workers"][shard.name] = result.worker
            for key in SUMMED_STATS:
                summary[key] += result.stats[key]
            skipped_examples += [f"{shard.name}/{k}" for k in result.stats["skipped_keys"][:5 - len(skipped_examples)]]
    finally:
        bar.close()
    # The computing alone: from the encoder (or the first worker) ready and the inputs hashed to
    # the last shard written.
    summary["embedding_seconds"] = round(time.perf_counter() - embedding_start, 3)
    _warn_skips(summary, skipped_examples, sorted({view.field for view in text_config.views}))
    summary["shards_remaining"] = len([s for s in shards if _recorded_digest(store, s.name) != digests[s.name]])
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["validation"] = store.validate()
    return summary


def run_embedding(
    config: FlameConfig | TextConfig,
    input_path: str | Path,
    out_dir: str | Path,
    encoder: TextEncoder | None = None,
    max_shards: int | None = None,
    progress: bool = True,
    caption_col: str | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """Embed every shard of ``input_path`` (a shard folder or a JSONL manifest) missing from
    the store under ``out_dir``; see ``embed_shards``.

    ``rank``/``world_size`` split the shards between processes (shard i goes to rank
    i % world_size); shard files are atomic, so processes never collide. With
    ``text.distributor: ray`` one process spreads the shards over a pool of Ray workers
    instead (``flame.text.embed_cluster``).
    """
    if not 0 <= rank < world_size:
        raise FlameError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")
    text_config = config.text if isinstance(config, FlameConfig) else config
    shards = input_shards(input_path, caption_col)[rank::world_size]
    if text_config.distributor == "ray" and world_size > 1:
        raise FlameError(f"text.distributor=ray starts its own {text_config.workers} worker(s): "
                         f"run one process, not world size {world_size}")
    return embed_shards(text_config, shards, out_dir, encoder=encoder, max_shards=max_shards, progress=progress)
