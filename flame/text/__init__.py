"""The frozen-LLM text side: multifaceted prompts, facet-decoupled encoding, the embedding store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flame.text.store import EmbeddingStore

if TYPE_CHECKING:
    from flame.config import TextConfig
    from flame.text.encoder import TextEncoder

__all__ = ["EmbeddingStore", "encoder_from_config", "load_encoder"]


def encoder_from_config(text_config: "TextConfig") -> "TextEncoder":
    """A ready (eval, no-grad) encoder for a validated ``TextConfig``."""
    from flame.text.encoder import TextEncoder

    return TextEncoder.from_config(text_config)


def load_encoder(profile_or_path: str = "tiny", config_path: str | None = None) -> "TextEncoder":
    """An encoder for a profile name of params.yaml, or for a params.yaml-style file path."""
    from flame.text.encoder import load_encoder as _load

    return _load(profile_or_path, config_path)
