"""The text modes, one registry by ``text.mode``: each gives both the text tower of a
FlameModel and the text side of its training (``base.TextMode``).

- ``flame`` (``frozen_llm``): the frozen LLM. Training reads its caption embeddings, computed
  once by ``flame embed``; the model encodes text with the same LLM. Nothing on the text side
  is trained.
- ``clip`` (``clip``): the CLIP baseline; a text transformer learns from the shards' raw
  captions together with the image tower. It needs open_clip (the ``clip`` extra), imported
  only when this mode is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from flame.config import FlameConfig
from flame.errors import FlameError
from flame.text_modes import frozen_llm
from flame.text_modes.base import TextMode, TrainingSide


def _clip() -> TextMode:
    try:
        from flame.text_modes import clip
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "open_clip":
            raise
        raise FlameError("text.mode clip (the CLIP baseline) needs open_clip: "
                         "pip install 'flame-pipeline[clip]'") from None
    return clip.MODE


_MODES: dict[str, Callable[[], TextMode]] = {"flame": lambda: frozen_llm.MODE, "clip": _clip}
TEXT_MODES = tuple(_MODES)


def text_mode(name: str) -> TextMode:
    """The text mode called ``name``; a ``FlameError`` names the known ones, or the extra a mode needs."""
    try:
        load = _MODES[name]
    except KeyError:
        raise FlameError(f"text.mode={name!r}: known modes are {sorted(_MODES)}") from None
    return load()


def training_side(config: FlameConfig, shards_dir: str | Path, embeddings_dir: str | Path | None) -> TrainingSide:
    """The text side of training ``config`` on ``shards_dir`` (and, in text mode flame, the store in
    ``embeddings_dir``). Cheap: it reads the store's metadata, never loads the LLM; its
    ``text_fingerprint`` and ``source_fingerprint`` are part of the training's identity."""
    mode = text_mode(config.text.mode)
    return mode.training_side(config, Path(shards_dir), Path(embeddings_dir) if embeddings_dir is not None else None)
