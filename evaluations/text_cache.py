"""Benchmark text embeddings cached on disk, per text encoder fingerprint and text protocol.

The LLM is frozen, so the embedding of a benchmark caption or class prompt never changes
for a given encoder fingerprint (LLM, layer, prompts): every checkpoint evaluated against
it reuses them, and only the image side is recomputed. Files live in
``$FLAME_EVAL_CACHE/<fingerprint>/<name>/part-*.safetensors`` (default
``~/.cache/flame/eval-text``), ``name`` being the facet set and pooling. New rows are
written as new part files, each atomically, every few thousand rows or minute and at the
end, so an interrupted evaluation resumes where it stopped and a large class list is
never rewritten whole. A part that cannot be read is ignored (and recomputed).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from flame.atomic import atomic_path
from flame.cache import cache_dir
from flame.digest import sha256_text

log = logging.getLogger(__name__)

PART_GLOB = "part-*.safetensors"


def cache_root() -> Path:
    """``$FLAME_EVAL_CACHE``, else ``$FLAME_CACHE/eval-text`` (default ``~/.cache/flame/eval-text``)."""
    return cache_dir("eval-text", env_override="FLAME_EVAL_CACHE")


def _key(text: str) -> str:
    return sha256_text(text)[:32]


def _safe(name: str) -> str:
    return "".join(c for c in name if c.isalnum() or c in "-_.")


class TextEmbeddingCache:
    def __init__(self, fingerprint: str, name: str, root: Path | None = None,
                 flush_rows: int = 2048, flush_seconds: float = 60.0):
        self.path = (root or cache_root()) / _safe(fingerprint) / _safe(name)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._entries: dict[str, torch.Tensor] = {}
        self._pending: dict[str, torch.Tensor] = {}
        self._last_flush = time.monotonic()
        for part in sorted(self.path.glob(PART_GLOB)):
            try:
                self._entries.update(load_file(str(part)))
            except Exception as exc:  # a foreign or damaged file: never trust it
                log.warning("ignoring unreadable text-embedding cache part %s (%s)", part, exc)

    def get(self, texts: list[str]) -> tuple[dict[int, torch.Tensor], list[int]]:
        """Cached rows by position, and the positions still to compute."""
        found, missing = {}, []
        for i, text in enumerate(texts):
            row = self._entries.get(_key(text))
            if row is None:
                missing.append(i)
            else:
                found[i] = row
        return found, missing

    def put(self, texts: list[str], embeddings: torch.Tensor) -> None:
        for text, row in zip(texts, embeddings):
            key = _key(text)
            if key not in self._entries:
                self._pending[key] = self._entries[key] = row.detach().float().contiguous().clone()
        if len(self._pending) >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the rows added since the last flush as one new part file."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / f"part-{time.time_ns()}-{os.getpid()}.safetensors"
        with atomic_path(target, suffix=".safetensors") as tmp:
            save_file(self._pending, str(tmp))
        self._pending = {}
