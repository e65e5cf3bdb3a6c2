"""The text towers a FlameModel can hold, by text mode, behind one ``encode(texts, facet_set)``.

``flame``: the frozen LLM (loaded lazily through ``flame.text``), its facet hidden states
pooled into one L2-normalised vector (``pool_facets``). ``clip``: the CLIP baseline's text
transformer, trained with the image tower (``clip_text``; open_clip is imported only when
it is built).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flame.config import RAW_FACET_SET, TextConfig
from flame.errors import FlameError


MEAN_THEN_NORMALIZE = "mean_then_normalize"
NORMALIZE_THEN_MEAN = "normalize_then_mean"


def pool_facets(per_facet: torch.Tensor, pooling: str = MEAN_THEN_NORMALIZE) -> torch.Tensor:
    """``[N, K, D]`` facet hidden states -> L2-normalised ``[N, D]``.

    ``mean_then_normalize`` is the reference's evaluation (average the raw states, then
    normalise); ``normalize_then_mean`` first puts every facet on the unit sphere, as the
    stored training targets are."""
    if pooling == MEAN_THEN_NORMALIZE:
        return F.normalize(per_facet.mean(dim=1), dim=-1)
    if pooling == NORMALIZE_THEN_MEAN:
        return F.normalize(F.normalize(per_facet, dim=-1).mean(dim=1), dim=-1)
    raise FlameError(f"unknown facet pooling {pooling!r}; known: {MEAN_THEN_NORMALIZE}, {NORMALIZE_THEN_MEAN}")


class FrozenLLMText:
    """Encodes texts with the frozen LLM the model was trained against; refuses another one."""

    def __init__(self, text_config: dict, fingerprint: str | None):
        self.text_config = text_config
        self.fingerprint = fingerprint
        self._encoder = None

    @property
    def encoder(self):
        if self._encoder is None:
            from flame.text import encoder_from_config

            encoder = encoder_from_config(TextConfig.model_validate(self.text_config))
            check_text_fingerprint(self.fingerprint, encoder.fingerprint, "the configured text encoder")
            self._encoder = encoder
        return self._encoder

    def set_encoder(self, encoder) -> None:
        """Reuse an already loaded encoder (it must have the trained-against fingerprint)."""
        check_text_fingerprint(self.fingerprint, encoder.fingerprint, "the given text encoder")
        self._encoder = encoder

    @torch.no_grad()
    def encode(self, texts: list[str], facet_set: str = RAW_FACET_SET, pooling: str = MEAN_THEN_NORMALIZE) -> torch.Tensor:
        if facet_set not in self.text_config["facet_sets"]:
            raise FlameError(
                f"facet set {facet_set!r} unknown to this model; known: {sorted(self.text_config['facet_sets'])}"
            )
        per_facet = torch.as_tensor(self.encoder.encode(list(texts), facet_set)).float()  # [N, K, D]
        return pool_facets(per_facet, pooling)


def _clip_text(text_config: dict, fingerprint: str | None):
    from flame.model.clip_text import ClipText  # open_clip is only imported for the baseline mode

    return ClipText(text_config, fingerprint)


TEXT_TOWERS = {"flame": FrozenLLMText, "clip": _clip_text}


def make_text_tower(mode: str, text_config: dict, fingerprint: str | None):
    if mode not in TEXT_TOWERS:
        raise FlameError(f"text mode {mode!r} is not available for FlameModel; known: {sorted(TEXT_TOWERS)}")
    return TEXT_TOWERS[mode](text_config, fingerprint)


def check_text_fingerprint(expected: str | None, actual: str | None, what: str) -> None:
    if expected and actual and expected != actual:
        raise FlameError(
            f"text encoder fingerprint mismatch: the model was trained against {expected}, "
            f"but {what} has {actual} (a different LLM, layer, dtype or prompts); "
            "embeddings from different encoders are not comparable"
        )
