"""The image side: a timm ViT whose patch tokens are projected into the LLM's hidden
size, average-pooled and L2-normalised."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from flame.config import ImageConfig
from flame.errors import FlameError
from flame.model.projector import MLPProjector


def create_backbone(image: ImageConfig) -> nn.Module:
    """A timm model without classifier head, at ``image.img_size`` (and ``patch_size``);
    with ``image.pretrained``, initialised from timm weights found in the local cache."""
    kwargs = dict(image.model_kwargs)
    kwargs["img_size"] = image.img_size
    if image.patch_size is not None:
        kwargs["patch_size"] = image.patch_size
    if image.pretrained:
        # timm resamples patch and position embeddings to the requested sizes.
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": local_timm_weights(image.model)})
    try:
        return timm.create_model(image.model, num_classes=0, **kwargs)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise FlameError(f"image.model={image.model!r}: timm cannot build it with {kwargs} ({exc})") from None


def local_timm_weights(model_name: str) -> str:
    """The cached weight file of timm's default pretrained tag for ``model_name``; never downloads."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg else None
    if cfg is not None and cfg.file and Path(cfg.file).is_file():
        return cfg.file
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(hub_id, filename) if hub_id else None
        if isinstance(path, str):
            return path
    raise FlameError(
        f"image.pretrained=true but no local timm weights for {image_name(model_name, hub_id)}; "
        "put them in the Hugging Face cache or set image.pretrained=false to train from scratch"
    )


def image_name(model_name: str, hub_id: str | None) -> str:
    return f"{model_name!r} (hub id {hub_id})" if hub_id else repr(model_name)


class ImageTower(nn.Module):
    def __init__(self, image: ImageConfig, embed_dim: int):
        super().__init__()
        self.backbone = create_backbone(image)
        self.width = int(getattr(self.backbone, "embed_dim", None) or self.backbone.num_features)
        self.num_prefix_tokens = int(getattr(self.backbone, "num_prefix_tokens", 0))
        self.projector = MLPProjector(self.width, embed_dim, image.projector_hidden)
        self.embed_dim = embed_dim

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The backbone's output tokens without prefix (class, register) tokens: ``[B, T, width]``."""
        tokens = self.backbone.forward_features(pixels)
        if tokens.dim() == 4:  # convolutional backbones: [B, C, H, W] -> [B, HW, C]
            return tokens.flatten(2).transpose(1, 2)
        return tokens[:, self.num_prefix_tokens:]

    def backbone_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The patch tokens average-pooled before the projector, ``[B, width]``, not normalised
        (what the reference's linear probe sees: ``encode_image(visual_only=True)``)."""
        return self.patch_tokens(pixels).mean(dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.projector(self.patch_tokens(pixels)).mean(dim=1)
        return F.normalize(pooled.float(), dim=-1)
