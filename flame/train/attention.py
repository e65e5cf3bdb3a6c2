"""Which scaled-dot-product-attention kernel the training forward pass uses."""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def attention_kernel(choice: str, device: torch.device):
    """A context for the forward pass. ``auto``: on a CPU the plain (math) kernel, since PyTorch's
    fused CPU kernel is slower for these towers' short sequences, its backward above all
    (``benchmarks/clip_step_profile.py``); elsewhere PyTorch's own pick. ``default``: always PyTorch's."""
    if choice == "math" or (choice == "auto" and device.type == "cpu"):
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()
