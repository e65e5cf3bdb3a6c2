"""Like-with-like model comparison on the gate's benchmark: per-query hits, the eval set's
fingerprint, and a paired bootstrap of the difference between two models.

The gate metric ``registry.gate_metric`` is ``<benchmark>/<metric>``, a key of the
evaluation summary. A model is scored by running the benchmark's task through
``evaluations.runner`` (its loader, image checks, text protocol, embedding and ranking) and
taking the metric's per-query hits from the task's output: the score of those hits is the
number the runner reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluations import runner
from evaluations.benchmarks import get_benchmark
from evaluations.datasets import ClassificationSet, RetrievalSet
from evaluations.hits import QueryHits
from evaluations.protocol import text_protocol
from evaluations.tasks import get_task
from evaluations.tasks.base import TextProtocol
from flame.config import EvalConfig, FlameConfig
from flame.digest import Digest
from flame.errors import FlameError
from flame.model import load as load_model

_BOOTSTRAP_CHUNK = 256  # resamples drawn at once: bounds memory on large eval sets


def parse_gate_metric(gate_metric: str) -> tuple[str, str]:
    """``<benchmark>/<metric>`` -> (benchmark, metric); the benchmark must exist and its task
    must score the metric per query."""
    benchmark, sep, metric = gate_metric.partition("/")
    if not (sep and benchmark and metric):
        raise FlameError(f"registry.gate_metric {gate_metric!r}: expected '<benchmark>/<metric>', "
                         "e.g. 'sample-dev-retrieval/mean_recall@5'")
    task = get_task(get_benchmark(benchmark).task)
    if metric not in task.per_query_metrics:
        supported = ", ".join(task.per_query_metrics) or "none"
        raise FlameError(f"registry.gate_metric {gate_metric!r}: metric {metric!r} of a {task.name} benchmark cannot be "
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
    """The eval set of ``config.registry.gate_metric``, loaded and selected as ``evaluations.runner``
    does (its first ``limit`` images); every image is checked readable with ``image.max_pixels``."""
    if limit is not None and limit < 1:
        raise FlameError(f"limit must be at least 1, got {limit}")
    benchmark, metric = parse_gate_metric(config.registry.gate_metric)
    bench = get_benchmark(benchmark)
    protocol = text_protocol(config.eval, bench.task, benchmark)
    data, _ = runner.select_data(get_task(bench.task), runner.load_benchmark(benchmark, config.eval), benchmark,
                                 limit=limit, max_pixels=config.image.max_pixels)
    return EvalSet(benchmark, bench.task, metric, data, protocol, config.eval, bench.path(), limit, config.image.max_pixels)


def eval_set_fingerprint(config: FlameConfig, *, limit: int | None = None) -> str:
    """The fingerprint of the eval set ``config.registry.gate_metric`` is scored on."""
    return load_eval_set(config, limit=limit).fingerprint()


def score(model, eval_set: EvalSet) -> QueryHits:
    """``model``'s hits on ``eval_set``'s metric: the benchmark's task run as ``evaluations.runner``
    runs it, and the metric's per-query hits taken from the task's output."""
    output = runner.score_data(model, get_task(eval_set.task), eval_set.data, eval_set.benchmark,
                               eval_set.eval_config, eval_set.protocol, max_pixels=eval_set.max_pixels)
    hits = output.per_query.get(eval_set.metric)
    if hits is None:
        reported = ", ".join(output.per_query) or "none"
        raise FlameError(f"registry.gate_metric {eval_set.gate_metric!r}: the {eval_set.task} task reported no per-query "
                         f"{eval_set.metric} on this eval set (it reported: {reported}; acc5 needs at least 5 classes)")
    return hits


def score_checkpoint(checkpoint_dir: str | Path, eval_set: EvalSet) -> QueryHits:
    """The hits of the FLAME checkpoint in ``checkpoint_dir`` (on the CPU, as ``flame evaluate``)."""
    return score(load_model(checkpoint_dir), eval_set)


@dataclass(frozen=True)
class Comparison:
    """Two models' hits on one eval set, and the paired bootstrap of their difference."""

    challenger: QueryHits
    champion: QueryHits
    diff: float
    ci_low: float
    ci_high: float


def compare(challenger: QueryHits, champion_checkpoint: str | Path, eval_set: EvalSet, samples: int = 1000,
            confidence: float = 0.95, seed: int = 0) -> Comparison:
    """The champion in ``champion_checkpoint`` scored on ``eval_set`` beside the ``challenger``'s hits."""
    champion = score_checkpoint(champion_checkpoint, eval_set)
    diff, low, high = paired_bootstrap(challenger, champion, samples, confidence, seed)
    return Comparison(challenger, champion, diff, low, high)


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
