"""Multi-positive contrastive losses between images and precomputed text embeddings.

Every image has ``m`` positive texts (its caption's facet embeddings). With
torch.distributed initialised, text (and for InfoNCE image) features are gathered
from all ranks with a gradient-correct all_gather, so each rank's loss covers its
local images against the global batch. Each rank's loss is normalised by its local
batch size; DDP's gradient averaging then gives exactly the single-process gradient
of the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (gradients flow back to each owner)."""
    rank, world = _world()
    if world == 1:
        return x
    import warnings

    import torch.distributed.nn.functional as dist_fn

    with warnings.catch_warnings():  # its suggested replacement is a private module
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_fn.all_gather(x.contiguous()), dim=0)


def multi_positive_sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
) -> torch.Tensor:
    """SigLIP-style loss: each local image against every text of the global batch.

    image_features ``[B, D]``; text_features ``[B, m, D]`` (the m positives of each
    local image); logit_scale is log(scale). Pairs of an image with its own m texts are
    labelled +1, all others -1. Returns sum over pairs / local B.
    """
    b, m, d = text_features.shape
    rank, _ = _world()
    all_texts = gather_with_grad(text_features.reshape(b * m, d))  # [R*B*m, D]
    logits = image_features.float() @ all_texts.float().T * logit_scale.exp() + logit_bias
    labels = -torch.ones_like(logits)
    rows = torch.arange(b, device=logits.device).repeat_interleave(m)
    cols = rank * b * m + torch.arange(b * m, device=logits.device)
    labels[rows, cols] = 1.0
    return -F.logsigmoid(labels * logits).sum() / b


def multi_positive_infonce_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE with m positives per image.

    Image -> text: softmax over all global texts, averaged over the image's m positives.
    Text -> image: each text has one positive image among the global images.
    The bias cancels in a softmax and is ignored.
    """
    b, m, d = text_features.shape
    rank, _ = _world()
    scale = logit_scale.exp()
    flat_texts = text_features.reshape(b * m, d).float()
    all_texts = gather_with_grad(flat_texts)
    all_images = gather_with_grad(image_features.float())
    offset = rank * b

    i2t = image_features.float() @ all_texts.T * scale  # [B, R*B*m]
    pos_cols = (offset + torch.arange(b, device=i2t.device)) * m
    pos_cols = pos_cols[:, None] + torch.arange(m, device=i2t.device)[None, :]  # [B, m]
    i2t_loss = -i2t.log_softmax(dim=1).gather(1, pos_cols).mean(dim=1).sum()

    t2i = flat_texts @ all_images.T * scale  # [B*m, R*B]
    targets = offset + torch.arange(b, device=t2i.device).repeat_interleave(m)
    t2i_loss = F.cross_entropy(t2i, targets, reduction="sum") / m

    return (i2t_loss + t2i_loss) / (2 * b)


LOSSES = {"sigmoid": multi_positive_sigmoid_loss, "infonce": multi_positive_infonce_loss}


def get_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"train.loss={name!r}: unknown; choose one of {sorted(LOSSES)}")
    return LOSSES[name]
