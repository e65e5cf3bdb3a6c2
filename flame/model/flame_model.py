"""FlameModel: the trained image tower, the learnable logit scale/bias, and the text tower
of its text mode (the identity of the frozen LLM it was trained against, or the CLIP
baseline's trained text transformer). Saved and loaded through ``flame.checkpoint``."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from flame import checkpoint, text_modes
from flame.config import RAW_FACET_SET, ImageConfig
from flame.errors import FlameError
from flame.model.image_tower import ImageTower
from flame.model.transforms import eval_transform
from flame.text_modes.facet_pooling import MEAN_THEN_NORMALIZE


class FlameModel(nn.Module):
    def __init__(
        self,
        image: ImageConfig,
        embed_dim: int,
        text_config: dict,
        text_fingerprint: str | None = None,
        text_mode: str = "flame",
        logit_scale_init: float = 10.0,
        logit_bias_init: float = -10.0,
    ):
        super().__init__()
        self.image_config = image
        self.embed_dim = int(embed_dim)
        self.text_mode = text_mode
        self.text_config = text_config
        self.text_fingerprint = text_fingerprint
        self.visual = ImageTower(image, self.embed_dim)
        # Stored as log(scale), like CLIP/SigLIP; the trainer clamps it.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))
        self.logit_bias = nn.Parameter(torch.tensor(float(logit_bias_init)))
        self.text = text_modes.text_mode(text_mode).tower(text_config, text_fingerprint)

    @property
    def text_encoder_name(self) -> str | None:
        return self.text_config.get("llm")

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

    def encode_text(self, texts: list[str], facet_set: str = RAW_FACET_SET, pooling: str = MEAN_THEN_NORMALIZE) -> torch.Tensor:
        """Texts -> L2-normalised ``[N, D]`` through the frozen LLM, its facet set's K states
        pooled by ``pooling`` (clip mode: the trained text tower; both arguments are ignored)."""
        return self.text.encode(texts, facet_set, pooling)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return eval_transform(image, self.image_config)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return image_features @ text_features.T * self.logit_scale.exp() + self.logit_bias

    def config_dict(self) -> dict:
        return {
            "embed_dim": self.embed_dim,
            "image": self.image_config.model_dump(mode="json"),
            "text_mode": self.text_mode,
            "text_encoder": self.text_encoder_name,
            "text_fingerprint": self.text_fingerprint,
            "text": self.text_config,
        }

    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write the model files of a checkpoint folder (atomically) into ``directory``."""
        return checkpoint.write_model(directory, self.state_dict(), self.config_dict(), extra)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> FlameModel:
    """A FlameModel from a checkpoint folder (or its ``model.safetensors``); safetensors only."""
    directory = checkpoint.checkpoint_dir(path)
    cfg = checkpoint.read_model_config(directory)
    config_path = directory / checkpoint.CONFIG_FILE
    try:
        model = FlameModel(
            # the weights come from the checkpoint, never from timm again
            image=ImageConfig.model_validate({**cfg["image"], "pretrained": False}),
            embed_dim=cfg["embed_dim"],
            text_config=cfg["text"],
            text_fingerprint=cfg.get("text_fingerprint"),
            text_mode=cfg.get("text_mode", "flame"),
        )
    except (KeyError, ValueError) as exc:
        raise FlameError(f"{config_path}: bad model config ({exc})") from None
    state = checkpoint.read_model_weights(directory, map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FlameError(f"{directory / checkpoint.WEIGHTS_FILE}: weights do not match the config "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval()
