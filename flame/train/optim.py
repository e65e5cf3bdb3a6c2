"""AdamW with the paper's settings, and a warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from flame.config import TrainConfig


def _decays(name: str, param: nn.Parameter) -> bool:
    # No weight decay on norms, biases, scalars (logit scale/bias), as in CLIP/SigLIP.
    return param.ndim >= 2 and "logit_" not in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if _decays(name, param) else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        param_groups(model, train.weight_decay), lr=train.lr, betas=tuple(train.betas), eps=train.eps
    )


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier at ``step``: linear warm-up to 1, then cosine down to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, total_steps: int):
    schedule = functools.partial(
        warmup_cosine, warmup_steps=train.warmup_steps, total_steps=total_steps, min_ratio=train.min_lr / train.lr
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
