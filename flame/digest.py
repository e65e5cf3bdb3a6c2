"""Content digests: the one way the project hashes files, text and configuration.

- ``sha256_file``: a file's bytes (shards, LLM weights, manifests);
- ``config_digest``: a JSON-able value in canonical form (sorted keys, no spaces), so the same
  settings give the same digest whatever their order (store fingerprints, training ids);
- ``Digest``: several parts fed one after another, each length-prefixed so no two different
  sequences of parts hash alike (an evaluation set: its settings, files and image URLs).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CHUNK = 1 << 22


def sha256_file(path: str | Path, chunk: int = CHUNK) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sampled_file_digest(path: str | Path, sample: int = 1 << 20) -> str:
    """Name, size and the first and last ``sample`` bytes: for multi-GB weights, not hashed in full."""
    path = Path(path)
    size = path.stat().st_size
    digest = Digest().add(f"{path.name}:{size}")
    with path.open("rb") as handle:
        digest.add(handle.read(sample))
        if size > sample:
            handle.seek(max(size - sample, sample))
            digest.add(handle.read(sample))
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def config_digest(value: Any, length: int | None = None) -> str:
    """The sha256 of ``value`` in canonical JSON, cut to ``length`` hex digits when given."""
    return sha256_text(canonical_json(value))[:length]


class Digest:
    """A sha256 over parts: bytes, text, JSON values and files, each length-prefixed."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def _feed(self, data: bytes) -> None:
        self._hash.update(len(data).to_bytes(8, "big"))
        self._hash.update(data)

    def add(self, part: bytes | str) -> "Digest":
        self._feed(part.encode("utf-8") if isinstance(part, str) else part)
        return self

    def add_json(self, value: Any) -> "Digest":
        return self.add(canonical_json(value))

    def add_file(self, path: str | Path, chunk: int = CHUNK) -> "Digest":
        path = Path(path)
        self._hash.update(path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as handle:
            while block := handle.read(chunk):
                self._hash.update(block)
        return self

    def hexdigest(self, length: int | None = None) -> str:
        return self._hash.hexdigest()[:length]
