"""The embedding store: one safetensors file per data shard under a fingerprint-named folder.

Layout: ``ROOT/<fingerprint>/meta.json`` (fingerprint inputs, ``K``, ``D``, the column
layout of K) and ``ROOT/<fingerprint>/<shard>.safetensors`` holding the fp16 tensor
``embeddings`` ``[n, K, D]`` (L2-normalised) with metadata ``keys``, ``stats`` (JSON) and
``input_digest``: the digest of the input shard file it was computed from (see
``flame.text.embed.InputShard.digest``), so a rerun and a training can tell embeddings of a
shard that has changed since. A shard file without one (written before digests were
recorded) counts as stale: ``flame embed`` recomputes it, training refuses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from flame.atomic import atomic_path, write_json
from flame.digest import config_digest
from flame.errors import FlameError

META_FILE = "meta.json"
SHARD_SUFFIX = ".safetensors"
TENSOR_NAME = "embeddings"
INPUT_DIGEST_KEY = "input_digest"
STORE_DTYPE = torch.float16
FORMAT_VERSION = 1


# Hex digits of a store fingerprint: the digest of everything that changes the stored numbers.
FINGERPRINT_HEX = 16


def fingerprint_of(inputs: dict[str, Any]) -> str:
    return config_digest(inputs, FINGERPRINT_HEX)


def _is_store_dir(path: Path) -> bool:
    return (path / META_FILE).is_file()


class EmbeddingStore:
    """Read and write the per-shard embedding files of one fingerprint folder."""

    def __init__(self, path: str | Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta
        self.K = int(meta["K"])
        self.D = int(meta["D"])
        self.fingerprint = str(meta["fingerprint"])
        self._lookups: dict[str, dict[str, int]] = {}

    # ---- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> "EmbeddingStore":
        """Open a fingerprint folder, or a root folder that holds exactly one."""
        path = Path(path)
        if not path.is_dir():
            raise FlameError(f"embedding store not found: {path}")
        if not _is_store_dir(path):
            found = sorted(p.name for p in path.iterdir() if p.is_dir() and _is_store_dir(p))
            if not found:
                raise FlameError(f"{path}: no embedding store (no {META_FILE} here or in a subfolder)")
            if len(found) > 1:
                raise FlameError(
                    f"{path}: holds {len(found)} embedding stores {found}; pass one of them as the path"
                )
            path = path / found[0]
        meta_path = path / META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FlameError(f"{meta_path}: unreadable store metadata ({exc})") from None
        for key in ("K", "D", "fingerprint"):
            if key not in meta:
                raise FlameError(f"{meta_path}: missing key {key!r}")
        return cls(path, meta)

    @classmethod
    def create(cls, root: str | Path, meta: dict[str, Any]) -> "EmbeddingStore":
        """Open ``root/<meta['fingerprint']>``, writing its meta.json if it is new.

        An existing folder must carry the same fingerprint inputs and shape, so a
        changed model, layer or template can never mix with old embeddings.
        """
        for key in ("K", "D", "fingerprint"):
            if key not in meta:
                raise ValueError(f"store meta needs {key!r}")
        meta = {"format_version": FORMAT_VERSION, "dtype": "float16", "normalized": True, **meta}
        path = Path(root) / str(meta["fingerprint"])
        meta_path = path / META_FILE
        if meta_path.is_file():
            existing = cls.open(path)
            for key in ("K", "D", "fingerprint_inputs", "layout"):
                if existing.meta.get(key) != meta.get(key):
                    raise FlameError(
                        f"{meta_path}: existing store differs in {key!r}; remove the folder or use another --out"
                    )
            added = {k: v for k, v in meta.items() if k not in existing.meta}
            if added:  # a store made by an older flame: record what it did not, so it can be found by it
                existing.meta.update(added)
                write_json(meta_path, existing.meta)
            return existing
        path.mkdir(parents=True, exist_ok=True)
        write_json(meta_path, meta)
        return cls(path, meta)

    # ---- shards --------------------------------------------------------------------
    def shard_path(self, shard: str) -> Path:
        return self.path / f"{shard}{SHARD_SUFFIX}"

    def shards(self) -> list[str]:
        return sorted(
            p.name[: -len(SHARD_SUFFIX)]
            for p in self.path.glob(f"*{SHARD_SUFFIX}")
            if not p.name.startswith(".")
        )

    def has(self, shard: str) -> bool:
        return self.shard_path(shard).is_file()

    def _open_shard(self, shard: str):
        path = self.shard_path(shard)
        if not path.is_file():
            raise FlameError(f"{self.path}: no embeddings for shard {shard!r}")
        try:
            return safe_open(str(path), framework="pt")
        except (SafetensorError, OSError) as exc:
            raise FlameError(f"{path}: not a readable safetensors file ({exc})") from None

    def read(self, shard: str) -> tuple[list[str], torch.Tensor]:
        """``(keys, embeddings[n, K, D] fp16)``, the tensor read through safetensors' mmap."""
        handle = self._open_shard(shard)
        keys = json.loads((handle.metadata() or {}).get("keys", "[]"))
        return keys, handle.get_tensor(TENSOR_NAME)

    def stats(self, shard: str) -> dict[str, Any]:
        handle = self._open_shard(shard)
        return json.loads((handle.metadata() or {}).get("stats", "{}"))

    def input_digest(self, shard: str) -> str | None:
        """The digest of the input the shard's embeddings were computed from (None: not recorded)."""
        return (self._open_shard(shard).metadata() or {}).get(INPUT_DIGEST_KEY)

    def stale(self, digests: dict[str, str]) -> dict[str, str | None]:
        """The shards of ``digests`` (shard name -> the sha256 of its input now) that this store
        holds embeddings of computed from another input: name -> the digest they recorded
        (None: not recorded). The one staleness check of training and the pipeline."""
        return {name: recorded for name, digest in digests.items()
                if self.has(name) and (recorded := self.input_digest(name)) != digest}

    def lookup(self, shard: str) -> dict[str, int]:
        """Sample key -> row index in the shard's tensor (cached)."""
        if shard not in self._lookups:
            handle = self._open_shard(shard)
            keys = json.loads((handle.metadata() or {}).get("keys", "[]"))
            self._lookups[shard] = {k: i for i, k in enumerate(keys)}
        return self._lookups[shard]

    def write(self, shard: str, keys: list[str], embeddings: torch.Tensor, stats: dict[str, Any] | None = None,
              *, input_digest: str) -> Path:
        """Atomically write one shard: ``embeddings`` ``[n, K, D]`` is stored as fp16, with the
        digest of the input file they were computed from."""
        if embeddings.dim() != 3 or tuple(embeddings.shape[1:]) != (self.K, self.D):
            raise ValueError(f"shard {shard!r}: expected [n, {self.K}, {self.D}], got {list(embeddings.shape)}")
        if embeddings.shape[0] != len(keys):
            raise ValueError(f"shard {shard!r}: {len(keys)} keys for {embeddings.shape[0]} rows")
        if len(set(keys)) != len(keys):
            raise ValueError(f"shard {shard!r}: duplicate sample keys")
        if not input_digest:
            raise ValueError(f"shard {shard!r}: the digest of its input is required")
        tensor = embeddings.detach().to("cpu", STORE_DTYPE).contiguous()
        metadata = {
            "keys": json.dumps(list(keys), ensure_ascii=False),
            "stats": json.dumps(stats or {}, sort_keys=True, ensure_ascii=False),
            "fingerprint": self.fingerprint,
            INPUT_DIGEST_KEY: input_digest,
        }
        target = self.shard_path(shard)
        with atomic_path(target) as tmp:
            save_file({TENSOR_NAME: tensor}, str(tmp), metadata=metadata)
        self._lookups.pop(shard, None)
        return target

    # ---- checks --------------------------------------------------------------------
    def validate(self) -> dict[str, Any]:
        """Check every shard: shape matches K/D, one row per key, all values finite.

        Returns ``{"ok", "errors", "shards", "samples", "K", "D", "bytes"}``; never raises
        for a bad shard (the errors list names it).
        """
        errors: list[str] = []
        samples = 0
        size = 0
        shards = self.shards()
        for shard in shards:
            path = self.shard_path(shard)
            size += path.stat().st_size
            try:
                keys, emb = self.read(shard)
            except (FlameError, json.JSONDecodeError, SafetensorError) as exc:
                errors.append(f"{shard}: unreadable ({exc})")
                continue
            if emb.dim() != 3 or tuple(emb.shape[1:]) != (self.K, self.D):
                errors.append(f"{shard}: shape {list(emb.shape)} is not [n, {self.K}, {self.D}]")
                continue
            if emb.shape[0] != len(keys):
                errors.append(f"{shard}: {emb.shape[0]} rows but {len(keys)} keys")
            if len(set(keys)) != len(keys):
                errors.append(f"{shard}: duplicate keys")
            if emb.numel() and not torch.isfinite(emb).all():
                errors.append(f"{shard}: non-finite values")
            samples += len(keys)
        return {
            "ok": not errors and bool(shards),
            "errors": errors if shards else [f"{self.path}: no shard files"],
            "shards": len(shards),
            "samples": samples,
            "K": self.K,
            "D": self.D,
            "bytes": size,
            "path": str(self.path),
        }
