"""The image side: a timm ViT whose patch tokens are projected into the LLM's hidden
size, average-pooled and L2-normalised."""

from __future__ import annotations

import logging

import timm
import torch
import torch.nn.functional as F
from torch import nn

from flame.config import ImageConfig
from flame.errors import FlameError
from flame.model.projector import MLPProjector

log = logging.getLogger(__name__)


def create_backbone(image: ImageConfig) -> nn.Module:
    """A timm model without classifier head, at ``image.img_size`` (and ``patch_size``)."""
    kwargs = dict(image.model_kwargs)
    kwargs["img_size"] = image.img_size
    if image.patch_size is not None:
        kwargs["patch_size"] = image.patch_size
    try:
        backbone = timm.create_model(image.model, pretrained=False, num_classes=0, **kwargs)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise FlameError(f"image.model={image.model!r}: timm cannot build it with {kwargs} ({exc})") from None
    if image.pretrained:
        _load_local_timm_weights(backbone, image)
    return backbone


def _load_local_timm_weights(backbone: nn.Module, image: ImageConfig) -> None:
    """timm's pretrained weights, only from the local cache (never the network)."""
    try:
        reference = timm.create_model(image.model, pretrained=True, num_classes=0,
                                      pretrained_cfg_overlay={"hf_hub_offline": True})
    except Exception as exc:  # timm raises many kinds when offline weights are absent
        raise FlameError(
            f"image.pretrained=true but no local timm weights for {image.model!r} ({exc}); "
            "set image.pretrained=false to train from scratch"
        ) from None
    state = reference.state_dict()
    # Patch size / resolution may differ from the pretrained model: let timm resample.
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        state = checkpoint_filter_fn(state, backbone)
    except Exception:
        pass
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    log.info("loaded local timm weights for %s (missing %d, unexpected %d)", image.model, len(missing), len(unexpected))


class ImageTower(nn.Module):
    def __init__(self, image: ImageConfig, embed_dim: int):
        super().__init__()
        self.backbone = create_backbone(image)
        width = getattr(self.backbone, "embed_dim", None) or self.backbone.num_features
        self.num_prefix_tokens = int(getattr(self.backbone, "num_prefix_tokens", 0))
        self.projector = MLPProjector(width, embed_dim, image.projector_hidden)
        self.embed_dim = embed_dim

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.forward_features(pixels)
        if tokens.dim() == 4:  # convolutional backbones: [B, C, H, W] -> [B, HW, C]
            tokens = tokens.flatten(2).transpose(1, 2)
        else:
            tokens = tokens[:, self.num_prefix_tokens:]
        pooled = self.projector(tokens).mean(dim=1)
        return F.normalize(pooled.float(), dim=-1)
