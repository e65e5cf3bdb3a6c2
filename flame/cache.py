"""The one cache folder of the project: ``$FLAME_CACHE`` (default ``~/.cache/flame``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("FLAME_CACHE") or Path.home() / ".cache" / "flame")


def cache_dir(kind: str, env_override: str | None = None) -> Path:
    """``$<env_override>`` when set, else ``cache_root() / kind`` (e.g. ``llm``, ``eval-text``)."""
    if env_override and os.environ.get(env_override):
        return Path(os.environ[env_override])
    return cache_root() / kind
