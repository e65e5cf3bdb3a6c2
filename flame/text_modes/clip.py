"""The CLIP baseline's text mode (``clip``): an open_clip text transformer trained from scratch
with the image tower.

Same place in a FlameModel as the frozen LLM, but its weights are trained jointly with the
image tower and saved in the same ``model.safetensors``. Training uses the same shards,
crops and batching, but each image's K texts are its raw captions as token ids ``[K, L]``
(``m`` of the K are drawn per step, as in FLAME). Captions are tokenized by open_clip's
byte-level BPE tokenizer (its vocabulary ships inside the package), so any language
tokenizes, if not well. open_clip is the ``clip`` extra: ``flame.text_modes`` imports this
module only when the mode is used.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer
from torch import nn

from flame.config import RAW_FACET_SET, ClipTextConfig, FlameConfig, TrainConfig
from flame.data.plan import ShardPlan, plan_shards
from flame.data.shards import ShardSample
from flame.digest import config_digest
from flame.errors import FlameError
from flame.text_modes.base import ModelText, TextMode

log = logging.getLogger(__name__)

# open_clip's BPE vocabulary size (49152 merges + byte tokens + start/end of text).
VOCAB_SIZE = 49408


@functools.lru_cache(maxsize=4)
def clip_tokenizer(context_length: int) -> SimpleTokenizer:
    return SimpleTokenizer(context_length=context_length)


def tokenize(texts: list[str], context_length: int) -> torch.Tensor:
    """Texts -> ``LongTensor [N, context_length]`` (longer texts are cut, keeping the end-of-text token)."""
    return clip_tokenizer(context_length)(list(texts))


def clip_text_config(config: FlameConfig) -> dict:
    """The ``text`` a clip-mode FlameModel records in its ``ModelConfig``."""
    return {"mode": "clip", "clip_text": config.clip_text.model_dump(mode="json")}


def clip_text_identity(clip_text: ClipTextConfig) -> str:
    """What a clip-mode training run is tied to (in place of the frozen LLM's fingerprint): its tower's shape."""
    return f"clip-text-{config_digest(clip_text.model_dump(mode='json'), 16)}"


# ---- the model's tower ----------------------------------------------------------------


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


# ---- the training side ----------------------------------------------------------------


def _captions(sample: ShardSample, field: str) -> list[str]:
    return [c for c in sample.captions(field) if c.strip()]


class CaptionTokens:
    def __init__(self, field: str, context_length: int, positives: int):
        self.field, self.context_length, self.positives = field, context_length, positives

    def for_shard(self, path: Path) -> Callable[[ShardSample], torch.Tensor | None]:
        def tokens(sample: ShardSample) -> torch.Tensor | None:
            captions = _captions(sample, self.field)
            if not captions:
                return None
            if len(captions) < self.positives:  # too few captions: repeat them so every image has m positives
                captions = [captions[i % len(captions)] for i in range(self.positives)]
            return tokenize(captions, self.context_length)

        return tokens


class ClipTraining:
    """Trains on the raw captions of the shards; ``embeddings_dir`` is not used."""

    def __init__(self, config: FlameConfig, shards_dir: Path, embeddings_dir: Path | None = None):
        self.config = config
        self.clip = config.clip_text
        self.shards_dir = shards_dir
        self.text_fingerprint = clip_text_identity(self.clip)
        self.source_fingerprint = f"captions:{self.clip.caption_field}"
        self.source = f"the {self.clip.caption_field!r} captions of {shards_dir}"

    def check(self, train: TrainConfig) -> None:
        pass  # any positives_per_image: an image with fewer captions repeats them

    def plan(self, train: TrainConfig) -> ShardPlan:
        field = self.clip.caption_field
        plan = plan_shards(self.shards_dir, lambda shard: lambda sample: bool(_captions(sample, field)))
        if plan.missing:
            log.warning("skipping %d samples without a %r caption (e.g. %s)",
                        plan.missing, field, ", ".join(plan.missing_examples))
        if plan.total == 0:
            raise FlameError(f"no sample of {self.shards_dir} has a caption in field {field!r}")
        return plan

    def texts(self, train: TrainConfig) -> CaptionTokens:
        return CaptionTokens(self.clip.caption_field, self.clip.context_length, train.positives_per_image)

    def model_text(self) -> ModelText:
        # No fingerprint: the text tower is trained, so no cached text embedding fits it.
        return ModelText(self.clip.embed_dim, clip_text_config(self.config), None)

    def features(self, forward, pixels: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, m, length = texts.shape
        image_features, text_features = forward(pixels, texts.reshape(b * m, length))
        return image_features, text_features.float().reshape(b, m, -1)


MODE = TextMode("clip", tower=ClipText, training_side=ClipTraining)
