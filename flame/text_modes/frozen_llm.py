"""The FLAME text mode (``flame``): the frozen LLM.

Training reads its caption embeddings from the embedding store made by ``flame embed``,
joined with the shards by sample key; nothing on the text side is trained. The model's
tower encodes text with the same LLM (loaded on first use), its facet hidden states
pooled into one L2-normalised vector, and refuses an LLM with another fingerprint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch

from flame.config import RAW_FACET_SET, FlameConfig, TextConfig, TrainConfig
from flame.data.plan import ShardPlan, plan_shards
from flame.data.shards import ShardSample, shard_name
from flame.errors import FlameError
from flame.text import encoder_from_config
from flame.text.store import EmbeddingStore
from flame.text_modes.base import ModelText, TextMode
from flame.text_modes.facet_pooling import MEAN_THEN_NORMALIZE, pool_facets

log = logging.getLogger(__name__)


# ---- the model's tower ----------------------------------------------------------------


class FrozenLLMTower:
    """Encodes texts with the frozen LLM the model was trained against; refuses another one."""

    def __init__(self, text_config: dict, fingerprint: str | None):
        self.text_config = text_config
        self.fingerprint = fingerprint
        self._encoder = None

    @property
    def encoder(self):
        if self._encoder is None:
            encoder = encoder_from_config(TextConfig.model_validate(self.text_config))
            check_text_fingerprint(self.fingerprint, encoder.fingerprint, "the configured text encoder")
            self._encoder = encoder
        return self._encoder

    def set_encoder(self, encoder) -> None:
        """Reuse an already loaded encoder (it must have the trained-against fingerprint)."""
        check_text_fingerprint(self.fingerprint, encoder.fingerprint, "the given text encoder")
        self._encoder = encoder

    @torch.no_grad()
    def encode(self, texts: list[str], facet_set: str = RAW_FACET_SET, pooling: str = MEAN_THEN_NORMALIZE) -> torch.Tensor:
        if facet_set not in self.text_config["facet_sets"]:
            raise FlameError(
                f"facet set {facet_set!r} unknown to this model; known: {sorted(self.text_config['facet_sets'])}"
            )
        per_facet = torch.as_tensor(self.encoder.encode(list(texts), facet_set)).float()  # [N, K, D]
        return pool_facets(per_facet, pooling)


def check_text_fingerprint(expected: str | None, actual: str | None, what: str) -> None:
    if expected and actual and expected != actual:
        raise FlameError(
            f"text encoder fingerprint mismatch: the model was trained against {expected}, "
            f"but {what} has {actual} (a different LLM, layer, dtype or prompts); "
            "embeddings from different encoders are not comparable"
        )


# ---- the training side ----------------------------------------------------------------


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


class FrozenLLMTraining:
    """Trains against the store in ``embeddings_dir``; opening it reads its metadata only."""

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
        stale = self.store.stale(plan.digests)
        if not stale:
            return
        (name, recorded), *others = stale.items()
        path = next(p for p in plan.shards if shard_name(p) == name)
        more = f" (and {len(others)} more shard(s): {', '.join(n for n, _ in others)})" if others else ""
        why = (f"were computed from input sha256 {recorded}, but {path} has sha256 {plan.digests[name]}: "
               "the shard changed since it was embedded" if recorded else
               "do not record which input they were computed from (made by an older flame embed)")
        raise FlameError(
            f"the embeddings of shard {name!r} in {self.store.shard_path(name)} {why}{more}. "
            f"Rerun `flame embed --input {self.shards_dir} --out {self.store.path.parent}` to re-embed it"
        )

    def texts(self, train: TrainConfig) -> StoreTexts:
        return StoreTexts(self.store.path)

    def model_text(self) -> ModelText:
        return ModelText(self.store.D, self.config.text.model_dump(mode="json"), self.text_fingerprint)

    @staticmethod
    def features(forward, pixels: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return forward(pixels), texts.float()


MODE = TextMode("flame", tower=FrozenLLMTower, training_side=FrozenLLMTraining)
