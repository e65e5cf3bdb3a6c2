"""Where computation runs and which number formats that hardware computes fast."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from flame.config.schema import DEVICE_SPELLING
from flame.errors import FlameError


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


def local_device(requested: str | torch.device = "auto", setting: str = "train.device") -> torch.device:
    """The device of this process, the one rule for it (training and the text encoder alike).

    ``requested`` is ``auto`` (the GPU of this process when CUDA is present, else the CPU), ``cpu``,
    ``cuda`` (the GPU of this process; an error without one) or ``cuda:N``. The GPU of this process
    is ``LOCAL_RANK`` (set by torchrun and Ray Train; 0 without) modulo the GPUs it sees, so ranks
    that each see only their own GPU and ranks that see the whole node both land right.
    ``setting`` names where ``requested`` came from, for the error."""
    spelled = str(requested)
    if not DEVICE_SPELLING.fullmatch(spelled):
        raise FlameError(f"{setting}={spelled!r} is not a device: use auto, cpu, cuda or cuda:N")
    if spelled == "cpu" or (spelled == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise FlameError(f"{setting}={spelled!r}, but this process sees no CUDA device; use auto or cpu")
    count = torch.cuda.device_count()
    if spelled in ("auto", "cuda"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % count)
    index = int(spelled.split(":")[1])
    if index >= count:
        raise FlameError(f"{setting}={spelled!r}, but this process sees {count} CUDA device(s)")
    return torch.device("cuda", index)
