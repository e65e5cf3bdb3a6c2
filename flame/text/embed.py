"""Embedding a dataset's captions into an EmbeddingStore, one data shard at a time.

Input: a folder of webdataset shards (``NNNNN.tar``) or one JSONL manifest (its own
single "shard", named by the file stem). Each sample gets ``K`` columns: for every
configured view (caption field x facet set), ``captions_per_sample`` captions (cycled
when a sample has fewer) times the set's facets. A shard file is the unit of work and
of resumption: a shard whose stored embeddings were computed from the same input bytes
(its recorded digest) is not recomputed unless asked; one whose input changed is.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from flame.config import FlameConfig, TextConfig
from flame.data.shards import ShardSample, iter_shard, list_shards, shard_name
from flame.errors import FlameError
from flame.digest import config_digest, sha256_file
from flame.jsonl import iter_jsonl
from flame.text.encoder import TextEncoder
from flame.text.prompts import normalise_caption
from flame.text.llm import resolve_source
from flame.text.store import FINGERPRINT_HEX, META_FILE, EmbeddingStore, fingerprint_of

log = logging.getLogger(__name__)


@dataclass
class InputShard:
    name: str
    path: Path
    caption_col: str | None = None  # JSONL column holding the ``caption`` field's captions

    def digest(self) -> str:
        """What the store records of this input: the sha256 of the file's bytes (for a JSONL
        read through a caption column, of those bytes and the column's name)."""
        digest = sha256_file(self.path)
        if self.caption_col and self.caption_col not in ("caption", "captions"):
            digest = config_digest({"sha256": digest, "caption_col": self.caption_col})
        return digest

    def samples(self) -> Iterator[ShardSample]:
        if self.path.suffix == ".tar":
            yield from iter_shard(self.path, with_images=False)
        else:
            yield from iter_jsonl_samples(self.path, self.name, self.caption_col)


def iter_jsonl_samples(path: Path, shard: str, caption_col: str | None = None) -> Iterator[ShardSample]:
    """Samples of a JSONL manifest; key = its ``key`` field, else the zero-padded record index.
    ``caption_col`` names the column read as the ``caption`` field (e.g. ``en``)."""
    for index, (_, record) in enumerate(iter_jsonl(path)):
        key = str(record["key"]) if record.get("key") is not None else f"{index:09d}"
        if caption_col and caption_col not in ("caption", "captions"):
            record = {**record, "captions": record.get(caption_col)}
        yield ShardSample(key=key, shard=shard, text=None, meta=record)


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


def store_layout(config: TextConfig) -> list[dict]:
    """Which caption field, caption index and facet each of the K columns holds."""
    columns = []
    for v, view in enumerate(config.views):
        facets = config.facet_sets[view.facet_set].facets
        for c in range(config.captions_per_sample):
            for f in range(len(facets)):
                columns.append({
                    "column": len(columns), "view": v, "field": view.field, "facet_set": view.facet_set,
                    "caption_index": c, "facet_index": f,
                })
    return columns


def text_config_key(config: TextConfig) -> str:
    """What names a store's text configuration without loading the LLM: the settings its
    fingerprint follows, the LLM's weights aside (only resolving them can tell those)."""
    used = sorted({view.facet_set for view in config.views})
    return config_digest({
        **{name: getattr(config, name) for name in ("llm", "gguf_file", "revision", "layer", "max_tokens", "bos_token")},
        "facet_sets": {name: config.facet_sets[name].model_dump() for name in used},
        "views": [view.model_dump() for view in config.views],
        "captions_per_sample": config.captions_per_sample,
    }, FINGERPRINT_HEX)


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


def store_meta(encoder: TextEncoder, config: TextConfig) -> dict:
    used = sorted({view.facet_set for view in config.views})
    inputs = {
        **{k: v for k, v in encoder.fingerprint_inputs.items() if k != "facet_sets"},
        "facet_sets": {name: config.facet_sets[name].model_dump() for name in used},
        "views": [view.model_dump() for view in config.views],
        "captions_per_sample": config.captions_per_sample,
    }
    layout = store_layout(config)
    return {
        "fingerprint": fingerprint_of(inputs),
        "fingerprint_inputs": inputs,
        "text_config": text_config_key(config),
        "encoder_fingerprint": encoder.fingerprint,
        "K": len(layout),
        "D": encoder.hidden_size,
        "layer": encoder.layer,
        # What the LLM computed in (bf16 on a GPU, fp32 on a CPU without bf16...): recorded,
        # not fingerprinted, so a store stays usable on a machine that would pick another.
        "compute_dtype": encoder.dtype_name,
        "views": inputs["views"],
        "captions_per_sample": config.captions_per_sample,
        "layout": layout,
    }


ENCODING_FIELDS = ("llm", "gguf_file", "revision", "layer", "dtype", "max_tokens", "bos_token", "facet_sets")


def check_encoder_matches(encoder: TextEncoder, config: TextConfig) -> None:
    """A passed-in encoder may be reused only if it encodes exactly as ``config`` would."""
    for name in ENCODING_FIELDS:
        if getattr(encoder.config, name) != getattr(config, name):
            raise FlameError(f"the encoder was built with a different text.{name} than this configuration")


@dataclass
class ShardResult:
    keys: list[str]
    embeddings: torch.Tensor
    stats: dict = field(default_factory=dict)


class ShardEmbedder:
    """Turns one shard's samples into ``[n, K, D]`` normalised embeddings."""

    def __init__(self, encoder: TextEncoder, config: TextConfig, progress: tqdm | None = None, chunk: int | None = None):
        self.encoder = encoder
        self.config = config
        self.progress = progress
        self.chunk = chunk or encoder.config.batch_size * 4
        self.totals = {"prompts": 0, "tokens": 0}
        self.started = time.perf_counter()
        self.missing_field = 0

    def _sample_captions(self, sample: ShardSample) -> tuple[list[list[str]] | None, int]:
        """Per view, the ``captions_per_sample`` normalised captions (None if a view has none),
        and how many empty captions the sample's fields hold (each field counted once)."""
        kept_by_field, empty = {}, 0
        for name in dict.fromkeys(view.field for view in self.config.views):
            raw = sample.captions(name)
            if not raw:
                self.missing_field += 1
            texts = [normalise_caption(t) for t in raw]
            kept_by_field[name] = [t for t in texts if t]
            empty += len(texts) - len(kept_by_field[name])
        if not all(kept_by_field.values()):
            return None, empty
        n = self.config.captions_per_sample
        return [[kept_by_field[v.field][i % len(kept_by_field[v.field])] for i in range(n)] for v in self.config.views], empty

    def _encode_unique(self, unique: dict[str, set[str]], stats: dict) -> dict[str, dict[str, torch.Tensor]]:
        """Each facet set's embeddings of its distinct captions. Chunks of the distinct captions
        are encoded in every facet set that reads them before the next chunk, so the progress
        bar advances by captions done."""
        # Similar lengths together; the encoder also sorts inside each chunk.
        ordered = sorted(sorted(set().union(*unique.values())), key=len, reverse=True) if unique else []
        out: dict[str, dict[str, torch.Tensor]] = {fs: {} for fs in unique}
        for start in range(0, len(ordered), self.chunk):
            chunk = ordered[start:start + self.chunk]
            for facet_set in sorted(unique):
                part = [text for text in chunk if text in unique[facet_set]]
                if not part:
                    continue
                emb, st = self.encoder.encode_with_stats(part, facet_set)
                out[facet_set].update(zip(part, emb))
                prompts = st.captions * self.encoder.num_facets(facet_set)
                stats["truncated"] += st.truncated
                stats["tokens"] += st.tokens
                stats["prompts"] += prompts
                self.totals["prompts"] += prompts
                self.totals["tokens"] += st.tokens
            if self.progress is not None:
                self.progress.update(len(chunk))
                elapsed = max(time.perf_counter() - self.started, 1e-9)
                self.progress.set_postfix(prompts_s=f"{self.totals['prompts'] / elapsed:.1f}",
                                          tokens_s=f"{self.totals['tokens'] / elapsed:.0f}")
        return out

    def embed(self, shard: InputShard) -> ShardResult:
        stats = {"samples_in": 0, "samples": 0, "skipped_empty": 0, "empty_captions": 0,
                 "unique_captions": 0, "truncated": 0, "prompts": 0, "tokens": 0,
                 "compute_dtype": self.encoder.dtype_name}
        keys: list[str] = []
        skipped: list[str] = []
        self.missing_field = 0
        chosen: list[list[list[str]]] = []
        seen: set[str] = set()
        for sample in shard.samples():
            stats["samples_in"] += 1
            if sample.key in seen:
                raise FlameError(f"{shard.path}: duplicate sample key {sample.key!r}")
            seen.add(sample.key)
            per_view, empty = self._sample_captions(sample)
            stats["empty_captions"] += empty
            if per_view is None:
                skipped.append(sample.key)
                continue
            keys.append(sample.key)
            chosen.append(per_view)
        if not chosen and skipped and self.missing_field >= len(skipped):
            fields = sorted({view.field for view in self.config.views})
            raise FlameError(
                f"{shard.path}: no sample has the caption field(s) {fields}; "
                f"for a JSONL manifest name the caption column with --caption-col"
            )
        stats["skipped_empty"] = len(skipped)
        stats["skipped_keys"] = skipped
        stats["samples"] = len(keys)

        unique: dict[str, set[str]] = {}
        for per_view in chosen:
            for view, texts in zip(self.config.views, per_view):
                unique.setdefault(view.facet_set, set()).update(texts)
        stats["unique_captions"] = len(set().union(*unique.values())) if unique else 0
        if self.progress is not None:
            self.progress.total = (self.progress.total or 0) + stats["unique_captions"]
            self.progress.refresh()
        encoded = self._encode_unique(unique, stats)

        rows = []
        for per_view in chosen:
            parts = [
                encoded[view.facet_set][text]
                for view, texts in zip(self.config.views, per_view)
                for text in texts
            ]
            rows.append(torch.cat(parts, dim=0))
        d = self.encoder.hidden_size
        k = len(store_layout(self.config))
        emb = torch.stack(rows) if rows else torch.zeros((0, k, d))
        return ShardResult(keys, F.normalize(emb.float(), dim=-1), stats)


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


def embed_shards(
    text_config: TextConfig,
    shards: list[InputShard],
    out_dir: str | Path,
    encoder: TextEncoder | None = None,
    max_shards: int | None = None,
    progress: bool = True,
    recompute: bool = False,
) -> dict:
    """Embed ``shards`` into the store under ``out_dir`` (the one for this encoder and prompts).

    A shard is skipped when the store holds it computed from the same input (its recorded
    ``InputShard.digest``), unless ``recompute``; one whose input changed since (or whose file
    records no digest) is re-embedded and counted in ``shards_stale``. ``max_shards`` stops
    after computing that many (the rest stay for a rerun). Every shard file is written
    atomically, replacing the old one. Returns a summary with the store path and its validation.
    The progress bar counts captions: the distinct caption texts of each shard it embeds.
    """
    start = time.perf_counter()
    encoder = encoder or TextEncoder.from_config(text_config)
    check_encoder_matches(encoder, text_config)
    store = EmbeddingStore.create(out_dir, store_meta(encoder, text_config))
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
               **{key: 0 for key in SUMMED_STATS}}
    skipped_examples: list[str] = []
    bar = tqdm(desc="embedding captions", unit="caption", disable=not progress, dynamic_ncols=True)
    embedder = ShardEmbedder(encoder, text_config, bar)
    try:
        for shard in todo:
            bar.set_description(f"embedding {shard.name}")
            result = embedder.embed(shard)
            store.write(shard.name, result.keys, result.embeddings, result.stats, input_digest=digests[shard.name])
            summary["shards_done"] += 1
            summary["captions"] += result.stats["unique_captions"]
            for key in SUMMED_STATS:
                summary[key] += result.stats[key]
            skipped_examples += [f"{shard.name}/{k}" for k in result.stats["skipped_keys"][:5 - len(skipped_examples)]]
    finally:
        bar.close()
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
    i % world_size); shard files are atomic, so processes never collide.
    """
    if not 0 <= rank < world_size:
        raise FlameError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")
    text_config = config.text if isinstance(config, FlameConfig) else config
    shards = input_shards(input_path, caption_col)[rank::world_size]
    return embed_shards(text_config, shards, out_dir, encoder=encoder, max_shards=max_shards, progress=progress)
