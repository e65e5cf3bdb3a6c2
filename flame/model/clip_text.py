"""The text side of the CLIP baseline: an open_clip text transformer trained from scratch.

Same place in a FlameModel as the frozen LLM (``text_mode="clip"``), but its weights
are trained jointly with the image tower and saved in the same ``model.safetensors``.
Captions are tokenized by open_clip's byte-level BPE tokenizer (its vocabulary ships
inside the package), so any language tokenizes, if not well.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer
from torch import nn

from flame.config import RAW_FACET_SET, ClipTextConfig, FlameConfig
from flame.digest import config_digest

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
    return f"clip-text-{config_digest(clip_text.model_dump(mode='json'), 16)}"


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
        return F.normalize(self._pooled(self._trim_padding(tokens)), dim=-1)

    @staticmethod
    def _trim_padding(tokens: torch.Tensor) -> torch.Tensor:
        """Drop the columns that are padding in every row. Exact: under the causal mask no
        token sees a later one, and each text is read at its end-of-text token."""
        length = int((tokens != 0).sum(dim=1).max().clamp(min=1))
        return tokens[:, :length]

    def _pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        # open_clip's TextTransformer.forward for this tower (causal mask, end-of-text pooling),
        # with its mask and positions cut to the trimmed length; it always runs all context_length.
        t, length = self.transformer, tokens.shape[1]
        x = t.token_embedding(tokens) + t.positional_embedding[:length]
        x = t.ln_final(t.transformer(x, attn_mask=t.attn_mask[:length, :length]))
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return t.text_projection(pooled) if isinstance(t.text_projection, nn.Linear) else pooled @ t.text_projection

    @torch.no_grad()
    def encode(self, texts: list[str], facet_set: str = RAW_FACET_SET, pooling: str | None = None) -> torch.Tensor:
        # facet_set and pooling only mean something to the frozen LLM's prompts; the baseline reads the text itself.
        device = next(self.parameters()).device
        return self(tokenize(texts, self.cfg.context_length).to(device)).float()
