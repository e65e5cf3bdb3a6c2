"""The FLAME text mode: the frozen LLM's caption embeddings, read from the embedding store
made by ``flame embed`` and joined with the shards by sample key."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch

from flame.config import FlameConfig, TrainConfig
from flame.data.shards import ShardSample, shard_name
from flame.errors import FlameError
from flame.text.store import EmbeddingStore
from flame.train.batches import ShardPlan, plan_shards
from flame.train.text_modes.base import ModelText

log = logging.getLogger(__name__)


class StoreTexts:
    """Each sample's ``[K, D]`` embeddings (fp16) from the store; opened inside the worker."""

    def __init__(self, store_path: Path):
        self.store_path = Path(store_path)
        self._store: EmbeddingStore | None = None

    def for_shard(self, path: Path) -> Callable[[ShardSample], torch.Tensor | None]:
        if self._store is None:
            self._store = EmbeddingStore.open(self.store_path)
        name = shard_name(path)
        if not self._store.has(name):
            return lambda sample: None
        keys, table = self._store.read(name)
        rows = {k: i for i, k in enumerate(keys)}
        return lambda sample: table[rows[sample.key]] if sample.key in rows else None


class FrozenLLMMode:
    name = "flame"

    def __init__(self, config: FlameConfig, shards_dir: Path, embeddings_dir: Path | None):
        if embeddings_dir is None:
            raise FlameError("text.mode flame trains against stored caption embeddings: pass --embeddings "
                             "(the folder made by `flame embed`); the CLIP baseline (--profile clip or "
                             "--text-mode clip) trains without them")
        self.config = config
        self.shards_dir = shards_dir
        self.store = EmbeddingStore.open(embeddings_dir)
        # The identity of the frozen text encoder + prompts that produced the store.
        self.text_fingerprint = str(self.store.meta.get("encoder_fingerprint") or self.store.fingerprint)
        self.source_fingerprint = self.store.fingerprint
        self.source = str(self.store.path)

    def check(self, train: TrainConfig) -> None:
        if train.positives_per_image > self.store.K:
            raise FlameError(
                f"train.positives_per_image={train.positives_per_image} but the store {self.store.path} "
                f"holds only K={self.store.K} embeddings per image"
            )

    def plan(self, train: TrainConfig) -> ShardPlan:
        store = self.store

        def usable(shard: str) -> Callable[[ShardSample], bool]:
            known = store.lookup(shard) if store.has(shard) else {}
            return lambda sample: sample.key in known

        plan = plan_shards(self.shards_dir, usable)
        self._check_embedded_from(plan)
        examples = ", ".join(plan.missing_examples)
        if plan.missing and train.missing_embeddings == "error":
            raise FlameError(
                f"{plan.missing} samples in {self.shards_dir} have no embeddings in {store.path} "
                f"(e.g. {examples}); run `flame embed` on these shards, or set train.missing_embeddings: skip"
            )
        if plan.missing:
            log.warning("skipping %d samples without embeddings (e.g. %s)", plan.missing, examples)
        if plan.total == 0:
            raise FlameError(f"no sample of {self.shards_dir} has embeddings in {store.path}")
        return plan

    def _check_embedded_from(self, plan: ShardPlan) -> None:
        """Refuse embeddings computed from other bytes than the shard the training reads."""
        stale = []
        for path in plan.shards:
            name = shard_name(path)
            if self.store.has(name) and (recorded := self.store.input_digest(name)) != plan.digests[name]:
                stale.append((name, path, recorded))
        if not stale:
            return
        name, path, recorded = stale[0]
        others = f" (and {len(stale) - 1} more shard(s): {', '.join(n for n, _, _ in stale[1:])})" if stale[1:] else ""
        why = (f"were computed from input sha256 {recorded}, but {path} has sha256 {plan.digests[name]}: "
               "the shard changed since it was embedded" if recorded else
               "do not record which input they were computed from (made by an older flame embed)")
        raise FlameError(
            f"the embeddings of shard {name!r} in {self.store.shard_path(name)} {why}{others}. "
            f"Rerun `flame embed --input {self.shards_dir} --out {self.store.path.parent}` to re-embed it"
        )

    def texts(self, train: TrainConfig) -> StoreTexts:
        return StoreTexts(self.store.path)

    def model_text(self) -> ModelText:
        return ModelText(self.store.D, self.config.text.model_dump(mode="json"), self.text_fingerprint)

    @staticmethod
    def features(forward, pixels: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return forward(pixels), texts.float()
