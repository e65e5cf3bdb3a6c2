"""``ModelConfig``: what a FlameModel is built from, and what its checkpoint's
``model_config.json`` records (beside the format version and the training's counters,
``flame.checkpoint.MODEL_COUNTERS``).

The initial logit scale and bias are not part of it: they only start a training
(``train.logit_scale_init``/``logit_bias_init``), and a checkpoint holds their trained values
in its weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field, field_validator

from flame import checkpoint
from flame.config import ImageConfig
from flame.errors import FlameError
from flame.text_modes import TEXT_MODES


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The width of the shared image-text space (the LLM's hidden size, or the CLIP text tower's).
    embed_dim: int = Field(ge=1)
    image: ImageConfig
    text_mode: str = "flame"
    # What cached text embeddings of this model are keyed by (the frozen LLM's fingerprint);
    # None where the text tower is trained.
    text_fingerprint: str | None = None
    # The text tower's configuration, as its text mode reads it.
    text: dict[str, Any]

    @field_validator("text_mode")
    @classmethod
    def _known_mode(cls, mode: str) -> str:
        if mode not in TEXT_MODES:
            raise ValueError(f"unknown text mode {mode!r}; known: {sorted(TEXT_MODES)}")
        return mode

    @computed_field
    @property
    def text_encoder(self) -> str | None:
        """The frozen LLM's name (``text.llm``); None in the CLIP baseline. Recorded for the people who read the file."""
        return self.text.get("llm")

    @classmethod
    def from_record(cls, record: dict[str, Any], path: Path) -> "ModelConfig":
        """The config of a ``model_config.json`` record (``path`` names it in errors): every key but
        the format version, the derived ``text_encoder`` and the counters."""
        recorded = {k: v for k, v in record.items()
                    if k not in ("format_version", "text_encoder", *checkpoint.MODEL_COUNTERS)}
        try:
            return cls.model_validate(recorded)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
            raise FlameError(f"{path}: bad model config ({problems})") from None


def read_config(path: str | Path) -> ModelConfig:
    """The ``ModelConfig`` of a checkpoint folder (or its ``model.safetensors``)."""
    directory = checkpoint.checkpoint_dir(path)
    return ModelConfig.from_record(checkpoint.read_model_config(directory), directory / checkpoint.CONFIG_FILE)
