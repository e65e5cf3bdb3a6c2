"""One optimisation step: features of the batch (through its text mode), the loss over the
global batch, backward, update."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from flame.model import FlameModel
from flame.train.attention import attention_kernel
from flame.train.distributed import DistContext, all_reduce
from flame.train.losses import Loss
from flame.train.precision import autocast


class NonFiniteError(ArithmeticError):
    """The loss or gradient norm is NaN/Inf; nothing of this step was applied."""


@dataclass
class TrainStep:
    model: FlameModel
    forward: Callable  # the model, or its DDP wrapper
    features: Callable  # TrainingSide.features: (forward, pixels, texts) -> image [B, D], texts [B, m, D]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: Loss
    precision: str
    grad_clip: float | None
    max_logit_scale: float
    ctx: DistContext
    attention: str = "auto"  # TrainConfig.attention
    # True: a NaN/Inf loss or gradient norm raises NonFiniteError before the update (a host sync per
    # step). False: the step goes on and ``unchecked`` collects them until the caller reads it.
    check_every_step: bool = True
    # The sum of the losses and gradient norms of the steps since ``take_unchecked``: NaN/Inf iff one was.
    unchecked: torch.Tensor | None = None

    def __call__(self, pixels: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """Forward, loss over the global batch, backward, update; returns the mean loss over ranks, a
        detached scalar on the device (reading it back waits for the step to finish)."""
        device = self.ctx.device
        pixels = pixels.to(device, non_blocking=True)
        texts = texts.to(device, non_blocking=True)
        # The kernel choice spans the backward too: gradient checkpointing re-runs the forward there.
        with attention_kernel(self.attention, device):
            with autocast(self.precision, device):
                image_features, text_features = self.features(self.forward, pixels, texts)
            loss = self.loss_fn(image_features.float(), text_features.float(), self.model.logit_scale,
                                self.model.logit_bias, ctx=self.ctx)
            mean = all_reduce(loss.detach(), self.ctx) / self.ctx.world_size
            if self.check_every_step and not math.isfinite(value := float(mean)):
                raise NonFiniteError(f"loss is {value}")
            loss.backward()
        # Without clipping (the default) the norm is still taken: a non-finite gradient must
        # not reach the weights or AdamW's moments. An infinite limit rescales nothing.
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip or math.inf)
        if self.check_every_step:
            if not torch.isfinite(norm):
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteError(f"gradient norm is {float(norm)}")
        else:
            watched = mean.float() + norm.float()
            self.unchecked = watched if self.unchecked is None else self.unchecked + watched
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.model.logit_scale.clamp_(max=math.log(self.max_logit_scale))
        return mean

    def take_unchecked(self) -> torch.Tensor | None:
        """``unchecked`` (None when every step is checked), and a fresh start."""
        unchecked, self.unchecked = self.unchecked, None
        return unchecked
