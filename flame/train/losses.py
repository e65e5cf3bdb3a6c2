"""Multi-positive contrastive losses between images and precomputed text embeddings.

Every image has ``m`` positive texts (its caption's facet embeddings), laid out
image-major: text ``j`` of image ``i`` is ``text_features[i, j]``. Both losses follow
the FLAME reference (``MultiPositiveSigmoidLoss``, ``MultiPositiveNCELoss``), including
how they are normalised.

With several processes (``ctx``, the process's ``DistContext``), text (and for InfoNCE
image) features are gathered from all ranks with a gradient-correct all_gather
(``flame.train.distributed.all_gather_with_grad``), so each rank's loss covers its local
images (rows) against the global batch (columns). Each rank divides by its local row
count, and the global batch has ``world_size`` times as many rows, so the mean of the
ranks' losses is the single-process loss of the global batch, and DDP's gradient
averaging gives exactly its gradient. For the sigmoid loss this is also the reference's
per-rank value: its local texts against all texts, divided by the local text count.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from flame.train.distributed import DistContext, all_gather_with_grad


class Loss(Protocol):
    def __call__(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                 logit_bias: torch.Tensor, *, ctx: DistContext) -> torch.Tensor: ...


def multi_positive_sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    ctx: DistContext,
) -> torch.Tensor:
    """SigLIP-style loss: each local image against every text of the global batch.

    image_features ``[B, D]``; text_features ``[B, m, D]`` (the m positives of each
    local image); logit_scale is log(scale). Pairs of an image with its own m texts are
    labelled +1, all others -1. Returns the sum over pairs / the local text count B*m.
    """
    b, m, d = text_features.shape
    all_texts = all_gather_with_grad(text_features.reshape(b * m, d), ctx)  # [R*B*m, D], image-major
    logits = image_features.float() @ all_texts.float().T * logit_scale.exp() + logit_bias
    labels = -torch.ones_like(logits)
    rows = torch.arange(b, device=logits.device).repeat_interleave(m)
    cols = ctx.rank * b * m + torch.arange(b * m, device=logits.device)  # this rank's own texts
    labels[rows, cols] = 1.0
    return -F.logsigmoid(labels * logits).sum() / (b * m)


def multi_positive_infonce_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    *,
    ctx: DistContext,
) -> torch.Tensor:
    """Symmetric InfoNCE with m positives per image, as the reference's MultiPositiveNCELoss.

    Image -> text: for each positive slot j, an N-way softmax of the image over the j-th
    texts of all N global images, its own the target. Text -> image: each text's softmax
    over the N global images, its own image the target. Each term is a cross-entropy
    averaged over its B*m local rows; the loss is their mean. The bias cancels in a
    softmax and is ignored.
    """
    b, m, d = text_features.shape
    scale = logit_scale.exp()
    local_texts = text_features.float()
    all_texts = all_gather_with_grad(local_texts, ctx)  # [N, m, D]
    all_images = all_gather_with_grad(image_features.float(), ctx)  # [N, D]
    local_images = ctx.rank * b + torch.arange(b, device=local_texts.device)  # their global indices
    targets = local_images.repeat_interleave(m)  # row (i, j) -> image i

    image_to_slot_texts = torch.einsum("bd,nmd->bmn", image_features.float(), all_texts) * scale  # [B, m, N]
    text_to_images = torch.einsum("bmd,nd->bmn", local_texts, all_images) * scale  # [B, m, N]
    i2t = F.cross_entropy(image_to_slot_texts.reshape(b * m, -1), targets)
    t2i = F.cross_entropy(text_to_images.reshape(b * m, -1), targets)
    return (i2t + t2i) / 2


LOSSES: dict[str, Loss] = {"sigmoid": multi_positive_sigmoid_loss, "infonce": multi_positive_infonce_loss}


def get_loss(name: str) -> Loss:
    if name not in LOSSES:
        raise ValueError(f"train.loss={name!r}: unknown; choose one of {sorted(LOSSES)}")
    return LOSSES[name]
