"""Where computation runs and which number formats that hardware computes fast."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matmuls (AMX, or AVX-512 with the bf16 extension)."""
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    if "AMX" in capability:
        return True
    if "AVX512" not in capability:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def has_fast_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def default_device() -> torch.device:
    """The GPU of this process under torchrun (``LOCAL_RANK``), else the first GPU, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
