"""The files of a ``flame download`` folder.

img2dataset writes, per shard ``NNNNN``: ``NNNNN.tar`` (the samples), ``NNNNN.parquet`` (each
sample's status and error) and, last, ``NNNNN_stats.json``; a shard counts as complete only once
its stats file exists. Ours beside them: the summary and the resume state. The folder may be
an object-store URL (``flame.locations``): img2dataset writes there through fsspec."""

from __future__ import annotations

import math
from pathlib import Path

from flame.data.shards import DOWNLOAD_STATE_FILE
from flame.locations import location

SUMMARY_FILE = "download_summary.json"
STATE_FILE = DOWNLOAD_STATE_FILE
SHARD_DIGITS = 5  # img2dataset's oom_shard_count default: shard names 00000 .. 99999


def shard_names(n_rows: int, per_shard: int) -> list[str]:
    return [f"{i:0{SHARD_DIGITS}d}" for i in range(math.ceil(n_rows / per_shard))]


def complete_shards(out_dir: str | Path) -> list[str]:
    """Names of the shards whose stats file exists (img2dataset finished them)."""
    out_dir = location(out_dir)
    return sorted(p.name[: -len("_stats.json")] for p in out_dir.glob("*_stats.json"))
