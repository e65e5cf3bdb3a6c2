"""Embedding one shard: its samples' captions through the frozen LLM into ``[n, K, D]``
normalised embeddings (``ShardEmbedder``), and what names the store they belong in
(``store_meta``). What a worker needs, on this machine or on a cluster's node; the loop over a
dataset's shards and the store's writes are ``flame.text.embed``'s.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from flame.config import TextConfig
from flame.data.shards import ShardSample, iter_shard
from flame.digest import config_digest, sha256_file
from flame.errors import FlameError
from flame.jsonl import iter_jsonl
from flame.locations import fetch, location
from flame.paths import is_url
from flame.text.encoder import TextEncoder
from flame.text.prompts import normalise_caption
from flame.text.store import FINGERPRINT_HEX, fingerprint_of


@dataclass
class InputShard:
    name: str
    # A file here, or an object-store URL: each process that reads the shard (a cluster's worker
    # too) fetches it into its own cache, so no worker depends on another machine's files.
    source: str | Path
    caption_col: str | None = None  # JSONL column holding the ``caption`` field's captions

    def __post_init__(self):
        self.source = str(self.source) if is_url(self.source) else Path(self.source)

    @property
    def path(self) -> Path:
        """A local file with the shard's bytes."""
        return fetch(location(self.source))

    def digest(self) -> str:
        """What the store records of this input: the sha256 of the file's bytes (for a JSONL
        read through a caption column, of those bytes and the column's name)."""
        digest = sha256_file(self.path)
        if self.caption_col and self.caption_col not in ("caption", "captions"):
            digest = config_digest({"sha256": digest, "caption_col": self.caption_col})
        return digest

    def samples(self) -> Iterator[ShardSample]:
        path = self.path
        if path.suffix == ".tar":
            yield from iter_shard(path, with_images=False)
        else:
            yield from iter_jsonl_samples(path, self.name, self.caption_col)


def iter_jsonl_samples(path: Path, shard: str, caption_col: str | None = None) -> Iterator[ShardSample]:
    """Samples of a JSONL manifest; key = its ``key`` field, else the zero-padded record index.
    ``caption_col`` names the column read as the ``caption`` field (e.g. ``en``)."""
    for index, (_, record) in enumerate(iter_jsonl(path)):
        key = str(record["key"]) if record.get("key") is not None else f"{index:09d}"
        if caption_col and caption_col not in ("caption", "captions"):
            record = {**record, "captions": record.get(caption_col)}
        yield ShardSample(key=key, shard=shard, text=None, meta=record)


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


@dataclass
class ShardResult:
    keys: list[str]
    embeddings: torch.Tensor
    stats: dict = field(default_factory=dict)
    worker: str = ""  # where it was computed: "<node>/<pid>"


def worker_name(node: str | None = None) -> str:
    """``<node>/<pid>`` of this process; the node defaults to the host name."""
    return f"{node or socket.gethostname()}/{os.getpid()}"


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
                raise FlameError(f"{shard.source}: duplicate sample key {sample.key!r}")
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
                f"{shard.source}: no sample has the caption field(s) {fields}; "
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
