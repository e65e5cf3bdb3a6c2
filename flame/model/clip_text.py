"""The text side of the CLIP baseline: an open_clip text transformer trained from scratch.

Same place in a FlameModel as the frozen LLM (``text_mode="clip"``), but its weights
are trained jointly with the image tower and saved in the same ``model.safetensors``.
Captions are tokenized by open_clip's byte-level BPE tokenizer (its vocabulary ships
inside the package), so any language tokenizes, if not well.
"""

from __future__ import annotations

import functools
import hashlib
import json

import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer
from torch import nn

from flame.config import RAW_FACET_SET, ClipTextConfig, FlameConfig

# open_clip's BPE vocabulary size (49152 merges + byte tokens + start/end of text).
VOCAB_SIZE = 49408


@functools.lru_cache(maxsize=4)
def clip_tokenizer(context_length: int) -> SimpleTokenizer:
    return SimpleTokenizer(context_length=context_length)


def tokenize(texts: list[str], context_length: int) -> torch.Tensor:
    """Texts -> ``LongTensor [N, context_length]`` (longer texts are cut, keeping the end-of-text token)."""
    return clip_tokenizer(context_length)(list(texts))


def clip_text_config(config: FlameConfig) -> dict:
    """The ``text_config`` a clip-mode FlameModel stores in ``model_config.json``."""
    return {"mode": "clip", "clip_text": config.clip_text.model_dump(mode="json")}


def clip_text_identity(clip_text: ClipTextConfig) -> str:
    """What a clip-mode training run is tied to (in place of the frozen LLM's fingerprint): its tower's shape."""
    digest = hashlib.sha256(json.dumps(clip_text.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    return f"clip-text-{digest[:16]}"


class ClipText(nn.Module):
    """``encode(texts) -> [N, D]`` (L2-normalised) and ``forward(tokens) -> [N, D]`` for training."""

    def __init__(self, text_config: dict, fingerprint: str | None = None):
        super().__init__()
        self.cfg = ClipTextConfig.model_validate(text_config.get("clip_text", {}))
        self.transformer = TextTransformer(
            context_length=self.cfg.context_length, vocab_size=VOCAB_SIZE, width=self.cfg.width,
            heads=self.cfg.heads, layers=self.cfg.layers, output_dim=self.cfg.embed_dim,
        )

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.transformer(tokens), dim=-1)

    @torch.no_grad()
    def encode(self, texts: list[str], facet_set: str = RAW_FACET_SET, pooling: str | None = None) -> torch.Tensor:
        # facet_set and pooling only mean something to the frozen LLM's prompts; the baseline reads the text itself.
        device = next(self.parameters()).device
        return self(tokenize(texts, self.cfg.context_length).to(device)).float()
