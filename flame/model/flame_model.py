"""FlameModel: the trained image tower, the learnable logit scale/bias, and the text tower
of its text mode (the identity of the frozen LLM it was trained against, or the CLIP
baseline's trained text transformer), built from one ``ModelConfig``. Saved and loaded
through ``flame.checkpoint``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from flame import checkpoint, text_modes
from flame.config import RAW_FACET_SET, ImageConfig
from flame.errors import FlameError
from flame.model.config import ModelConfig, read_config
from flame.model.image_tower import ImageTower
from flame.model.transforms import eval_transform
from flame.text_modes.facet_pooling import MEAN_THEN_NORMALIZE


class FlameModel(nn.Module):
    def __init__(self, config: ModelConfig, *, logit_scale_init: float = 10.0, logit_bias_init: float = -10.0):
        """A fresh model of ``config``; the logit scale and bias start at the given values
        (``train.logit_scale_init``/``logit_bias_init``; a loaded checkpoint replaces them)."""
        super().__init__()
        self.config = config
        self.visual = ImageTower(config.image, config.embed_dim)
        # Stored as log(scale), like CLIP/SigLIP; the trainer clamps it.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))
        self.logit_bias = nn.Parameter(torch.tensor(float(logit_bias_init)))
        self.text = text_modes.text_mode(config.text_mode).tower(config.text, config.text_fingerprint)

    # What the config says, under the names the model's users read.
    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def image_config(self) -> ImageConfig:
        return self.config.image

    @property
    def text_mode(self) -> str:
        return self.config.text_mode

    @property
    def text_config(self) -> dict[str, Any]:
        return self.config.text

    @property
    def text_fingerprint(self) -> str | None:
        return self.config.text_fingerprint

    @property
    def text_encoder_name(self) -> str | None:
        return self.config.text_encoder

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> L2-normalised ``[B, D]``."""
        return self.visual(pixels)

    def encode_image_backbone(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, width]``: the image tower's pooled features before the
        projector, not normalised (the linear probe's features, as in the reference)."""
        return self.visual.backbone_features(pixels)

    def forward(self, pixels: torch.Tensor, text_tokens: torch.Tensor | None = None):
        """Image features; with ``text_tokens`` (clip mode, trainable text tower) also the text features,
        so one (DDP) forward covers every trained parameter."""
        if text_tokens is None:
            return self.encode_image(pixels)
        return self.encode_image(pixels), self.text(text_tokens)

    def encode_text(self, texts: list[str], facet_set: str = RAW_FACET_SET,
                    pooling: str = MEAN_THEN_NORMALIZE) -> torch.Tensor:
        """Texts -> L2-normalised ``[N, D]`` through the frozen LLM, its facet set's K states
        pooled by ``pooling`` (clip mode: the trained text tower; both arguments are ignored)."""
        return self.text.encode(texts, facet_set, pooling)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return eval_transform(image, self.config.image)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return image_features @ text_features.T * self.logit_scale.exp() + self.logit_bias

    def save(self, directory: str | Path, counters: dict[str, Any] | None = None) -> Path:
        """Write the model files of a checkpoint folder (atomically) into ``directory``; ``counters``:
        what the training records beside the config (``flame.checkpoint.MODEL_COUNTERS``)."""
        return checkpoint.write_model(directory, self.state_dict(), self.config.model_dump(mode="json"), counters)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> FlameModel:
    """A FlameModel from a checkpoint folder (or its ``model.safetensors``); safetensors only."""
    directory = checkpoint.checkpoint_dir(path)
    config = read_config(directory)
    # the weights come from the checkpoint, never from timm again
    model = FlameModel(config.model_copy(update={"image": config.image.model_copy(update={"pretrained": False})}))
    state = checkpoint.read_model_weights(directory, map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FlameError(f"{directory / checkpoint.WEIGHTS_FILE}: weights do not match the config "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval()
