"""Benchmark text embeddings cached on disk, per text encoder fingerprint and facet set.

The LLM is frozen, so the embedding of a benchmark caption or class prompt never changes
for a given encoder fingerprint (LLM, layer, dtype, prompts): every checkpoint evaluated
against it reuses them, and only the image side is recomputed. Files live in
``$FLAME_EVAL_CACHE/<fingerprint>/<facet_set>.safetensors`` (default
``~/.cache/flame/eval-text``) and are rewritten atomically; a file that cannot be read is ignored
and rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from flame.atomic import atomic_path
from flame.cache import cache_dir

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$FLAME_EVAL_CACHE``, else ``$FLAME_CACHE/eval-text`` (default ``~/.cache/flame/eval-text``)."""
    return cache_dir("eval-text", env_override="FLAME_EVAL_CACHE")


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class TextEmbeddingCache:
    def __init__(self, fingerprint: str, facet_set: str, root: Path | None = None):
        safe = "".join(c for c in f"{fingerprint}" if c.isalnum() or c in "-_.")
        self.path = (root or cache_root()) / safe / f"{facet_set}.safetensors"
        self._entries: dict[str, torch.Tensor] = {}
        if self.path.exists():
            try:
                self._entries = dict(load_file(str(self.path)))
            except Exception as exc:  # a truncated or foreign file: start over, never trust it
                log.warning("ignoring unreadable text-embedding cache %s (%s)", self.path, exc)

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
            self._entries[_key(text)] = row.detach().float().contiguous().clone()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path, suffix=".safetensors") as tmp:
            save_file(self._entries, str(tmp))
