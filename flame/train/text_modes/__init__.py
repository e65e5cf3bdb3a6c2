"""The text side of a training, one object per ``text.mode`` (see ``base.TextMode``).

- ``flame``: the frozen LLM's caption embeddings, computed once by ``flame embed``, are the
  texts; nothing on the text side is trained.
- ``clip``: the CLIP baseline; a text transformer learns from the shards' raw captions
  together with the image tower (needs open_clip, the ``clip`` extra).
"""

from __future__ import annotations

from pathlib import Path

from flame.config import FlameConfig
from flame.errors import FlameError
from flame.train.text_modes.base import TextMode


def _frozen_llm(config: FlameConfig, shards_dir: Path, embeddings_dir: Path | None):
    from flame.train.text_modes.frozen_llm import FrozenLLMMode

    return FrozenLLMMode(config, shards_dir, embeddings_dir)


def _clip(config: FlameConfig, shards_dir: Path, embeddings_dir: Path | None):
    try:
        from flame.train.text_modes.clip import ClipMode
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "open_clip":
            raise
        raise FlameError("text.mode clip (the CLIP baseline) needs open_clip: "
                         "pip install 'flame-pipeline[clip]'") from None
    return ClipMode(config, shards_dir)


TEXT_MODES = {"flame": _frozen_llm, "clip": _clip}


def text_mode_for(config: FlameConfig, shards_dir: str | Path, embeddings_dir: str | Path | None) -> TextMode:
    """The ``TextMode`` of ``config.text.mode`` for training on ``shards_dir``."""
    try:
        make = TEXT_MODES[config.text.mode]
    except KeyError:
        raise FlameError(f"text.mode={config.text.mode!r}: known modes are {sorted(TEXT_MODES)}") from None
    return make(config, Path(shards_dir), Path(embeddings_dir) if embeddings_dir is not None else None)
