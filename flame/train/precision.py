"""Choosing the autocast dtype: bf16 where the hardware computes it natively, else fp32."""

from __future__ import annotations

import contextlib

import torch

from flame.device import has_fast_bf16


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` when the device computes bf16 natively, else ``fp32``."""
    if precision != "auto":
        return precision
    return "bf16" if has_fast_bf16(device) else "fp32"


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
