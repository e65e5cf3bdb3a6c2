"""What a training will read of a shard folder, counted before it starts: every shard with
its sha256 (``shard_digests``, a training's data in its identity) and its samples that the
text side can use (``plan_shards``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from flame.data.shards import ShardSample, iter_shard, list_shards, shard_name
from flame.digest import sha256_file


@dataclass
class ShardPlan:
    shards: list[Path]
    usable: dict[str, int]  # shard name -> samples with texts (their text mode can use)
    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # shard name -> sha256 of its tar

    @property
    def total(self) -> int:
        return sum(self.usable.values())


def shard_digests(shards_dir: str | Path) -> dict[str, str]:
    """Shard name -> the sha256 of its tar, for every shard of ``shards_dir``."""
    return {shard_name(path): sha256_file(path) for path in list_shards(shards_dir)}


def plan_shards(shards_dir: str | Path, usable: Callable[[str], Callable[[ShardSample], bool]]) -> ShardPlan:
    """Every shard of ``shards_dir`` with its sha256 and its count of samples that
    ``usable(shard name)(sample)`` accepts; the others are counted as missing (with a few examples)."""
    plan = ShardPlan(shards=list_shards(shards_dir), usable={}, digests=shard_digests(shards_dir))
    for path in plan.shards:
        name = shard_name(path)
        accepts = usable(name)
        count = 0
        for sample in iter_shard(path, with_images=False):
            if accepts(sample):
                count += 1
            else:
                plan.missing += 1
                if len(plan.missing_examples) < 5:
                    plan.missing_examples.append(f"{name}/{sample.key}")
        plan.usable[name] = count
    return plan
