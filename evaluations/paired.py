"""Like-with-like model comparison on the gate's benchmark: per-query hits, the eval set's
fingerprint, and a paired bootstrap of the difference between two models.

The gate metric ``registry.gate_metric`` is ``<benchmark>/<metric>``, a key of the
evaluation summary. Scoring here goes through the same loaders, text protocol, embedding
and ranking code as ``evaluations.runner``, so the mean of a model's hits is the number the
runner reports for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluations.benchmarks import get_benchmark
from evaluations.datasets import ClassificationSet, RetrievalSet
from evaluations.embedding import embed_images, embed_texts
from evaluations.image_checks import check_images
from evaluations.metrics import RECALL_KS, classification_hits, hit_rate, mean_recall, retrieval_hits
from evaluations.protocol import TextProtocol, text_protocol
from evaluations.tasks.zeroshot_classification import class_embeddings
from flame.config import EvalConfig, FlameConfig
from flame.digest import Digest
from flame.errors import FlameError

RETRIEVAL_TASKS = ("retrieval", "long_retrieval")
_RETRIEVAL_METRIC = re.compile(r"(image_retrieval_recall|text_retrieval_recall|mean_recall)@(\d+)")
_ACCURACY_METRIC = re.compile(r"acc(\d+)")
ACCURACY_KS = (1, 5)
_BOOTSTRAP_CHUNK = 256  # resamples drawn at once: bounds memory on large eval sets


def supported_metrics(task: str) -> list[str]:
    if task in RETRIEVAL_TASKS:
        return [f"{m}@{k}" for m in ("image_retrieval_recall", "text_retrieval_recall", "mean_recall") for k in RECALL_KS]
    if task == "zeroshot_classification":
        return [f"acc{k}" for k in ACCURACY_KS]
    return []


def parse_gate_metric(gate_metric: str) -> tuple[str, str]:
    """``<benchmark>/<metric>`` -> (benchmark, metric); the benchmark must exist."""
    benchmark, sep, metric = gate_metric.partition("/")
    if not (sep and benchmark and metric):
        raise FlameError(f"registry.gate_metric {gate_metric!r}: expected '<benchmark>/<metric>', "
                         "e.g. 'sample-dev-retrieval/mean_recall@5'")
    task = get_benchmark(benchmark).task
    if metric not in supported_metrics(task):
        supported = ", ".join(supported_metrics(task)) or "none"
        raise FlameError(f"registry.gate_metric {gate_metric!r}: metric {metric!r} of a {task} benchmark cannot be "
                         f"scored per query; supported: {supported}")
    return benchmark, metric


@dataclass(frozen=True)
class EvalSet:
    """The data and text protocol one gate metric is scored on (``limit``: first N images only;
    ``max_pixels``: the image reader's limit, ``image.max_pixels``)."""

    benchmark: str
    task: str
    metric: str
    data: RetrievalSet | ClassificationSet
    protocol: TextProtocol
    eval_config: EvalConfig
    manifest: Path
    limit: int | None = None
    max_pixels: int | None = None

    @property
    def gate_metric(self) -> str:
        return f"{self.benchmark}/{self.metric}"

    def fingerprint(self) -> str:
        """sha256 of the files (manifest, every image read) plus the settings that change scores."""
        digest = Digest()
        settings = (self.benchmark, self.task, self.metric, str(self.limit), self.protocol.facet_set,
                    self.protocol.pooling, *self.protocol.template_strings())
        for value in settings:
            digest.add(value)
        for path in _files_under(self.manifest):
            digest.add(path.relative_to(self.manifest.parent).as_posix()).add_file(path)
        for ref in self.data.images:
            local = Path(ref)
            if local.is_file():
                digest.add_file(local)
            else:  # a remote image: its URL is all that can be known without fetching it
                digest.add(ref)
        return digest.hexdigest()


def _files_under(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def load_eval_set(config: FlameConfig, *, limit: int | None = None) -> EvalSet:
    """The eval set of ``config.registry.gate_metric``; every image is checked readable."""
    if limit is not None and limit < 1:
        raise FlameError(f"limit must be at least 1, got {limit}")
    benchmark, metric = parse_gate_metric(config.registry.gate_metric)
    bench = get_benchmark(benchmark)
    path = bench.path()
    if not path.exists():
        raise FlameError(f"benchmark {benchmark!r} of registry.gate_metric: data not found at {path}")
    data = bench.load(path, config.eval)
    if limit:
        data = data.subset(list(range(min(limit, len(data.images)))))
    check_images(data.images, what=benchmark, max_pixels=config.image.max_pixels)
    protocol = text_protocol(config.eval, bench.task, benchmark)
    return EvalSet(benchmark, bench.task, metric, data, protocol, config.eval, path, limit, config.image.max_pixels)


def eval_set_fingerprint(config: FlameConfig, *, limit: int | None = None) -> str:
    """The fingerprint of the eval set ``config.registry.gate_metric`` is scored on."""
    return load_eval_set(config, limit=limit).fingerprint()


@dataclass(frozen=True)
class QueryHits:
    """One model's hit (True/False) per query of an eval set's metric, per direction of the
    metric (mean_recall has two), with the image each query belongs to (``units``)."""

    metric: str
    hits: tuple[torch.Tensor, ...]
    units: tuple[np.ndarray, ...]
    n_units: int

    @property
    def score(self) -> float:
        rates = [hit_rate(h) for h in self.hits]
        return mean_recall(*rates) if len(rates) == 2 else rates[0]

    @property
    def n_queries(self) -> int:
        return sum(len(h) for h in self.hits)


def score_per_query(model, eval_set: EvalSet) -> QueryHits:
    """``model``'s hits on ``eval_set``, embedded and ranked as ``evaluations.runner`` does."""
    cfg, data, protocol = eval_set.eval_config, eval_set.data, eval_set.protocol
    image_emb = embed_images(model, data.images, cfg.batch_size, desc=f"{eval_set.benchmark}: images",
                             max_pixels=eval_set.max_pixels)
    n_images = len(data.images)
    if eval_set.task in RETRIEVAL_TASKS:
        family, k = _RETRIEVAL_METRIC.fullmatch(eval_set.metric).groups()
        text_emb = embed_texts(model, data.texts, protocol.facet_set, cfg.batch_size,
                               desc=f"{eval_set.benchmark}: texts ({protocol.facet_set})",
                               use_cache=cfg.text_cache, pooling=protocol.pooling)
        hits = retrieval_hits(image_emb, text_emb, data.text_to_image, ks=(int(k),))
        by_text = (hits[f"image_retrieval_recall@{k}"], np.asarray(data.text_to_image))
        by_image = (hits[f"text_retrieval_recall@{k}"], np.arange(n_images))
        chosen = {"image_retrieval_recall": [by_text], "text_retrieval_recall": [by_image],
                  "mean_recall": [by_text, by_image]}[family]
    else:
        k = int(_ACCURACY_METRIC.fullmatch(eval_set.metric).group(1))
        classifier = class_embeddings(model, data.classnames, protocol, cfg.batch_size, cfg.text_cache)
        chosen = [(classification_hits(image_emb @ classifier.T, data.labels, (k,))[k], np.arange(n_images))]
    return QueryHits(eval_set.metric, tuple(h for h, _ in chosen), tuple(u for _, u in chosen), n_images)


def score_checkpoint(checkpoint_dir: str | Path, eval_set: EvalSet) -> QueryHits:
    """The hits of the FLAME checkpoint in ``checkpoint_dir`` (on the CPU, as ``flame evaluate``)."""
    from flame.model import load

    return score_per_query(load(checkpoint_dir), eval_set)


def paired_bootstrap(challenger_hits: QueryHits, champion_hits: QueryHits, samples: int = 1000,
                     confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(challenger score - champion score, and the percentile interval of that difference at ``confidence``).

    Each resample draws images with replacement and scores both models on that same draw; an
    image carries all its queries (its texts for text->image, itself for image->text), so the
    correlated captions of one image are never split and both directions of mean_recall move together.
    """
    if samples < 1:
        raise FlameError(f"bootstrap samples must be at least 1, got {samples}")
    if not 0 < confidence < 1:
        raise FlameError(f"bootstrap confidence must be between 0 and 1, got {confidence}")
    _check_same_queries(challenger_hits, champion_hits)
    n = challenger_hits.n_units
    per_direction = []  # (challenger hits, champion hits, queries) summed per image
    for ch, cp, units in zip(challenger_hits.hits, champion_hits.hits, challenger_hits.units):
        per_direction.append((np.bincount(units, weights=ch.numpy().astype(np.float64), minlength=n),
                              np.bincount(units, weights=cp.numpy().astype(np.float64), minlength=n),
                              np.bincount(units, minlength=n).astype(np.float64)))
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, samples, _BOOTSTRAP_CHUNK):
        draws = rng.multinomial(n, np.full(n, 1.0 / n), size=min(_BOOTSTRAP_CHUNK, samples - start))
        rates = [(draws @ ch - draws @ cp) / (draws @ queries) for ch, cp, queries in per_direction]
        diffs.append(np.mean(rates, axis=0))
    diffs = np.concatenate(diffs)
    tail = (1 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return challenger_hits.score - champion_hits.score, float(low), float(high)


def _check_same_queries(a: QueryHits, b: QueryHits) -> None:
    same = (a.metric == b.metric and a.n_units == b.n_units and len(a.units) == len(b.units)
            and all(np.array_equal(x, y) for x, y in zip(a.units, b.units)))
    if not same:
        raise FlameError(f"cannot pair scores: {a.metric} on {a.n_queries} queries vs {b.metric} on "
                         f"{b.n_queries} queries (not the same eval set)")
