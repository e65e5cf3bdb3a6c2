"""Run benchmarks (by name) or a user's manifest on a model; write CLIP_benchmark-style JSON.

One result is ``{"dataset", "model", "pretrained", "task", "text_protocol", "metrics",
"details", "plots"}`` (``text_protocol``: how its texts were embedded, see ``protocol``);
several are ``{"results": [...], "summary": {...}, "skipped": [...]}`` where ``summary``
flattens every metric to ``{benchmark}/{metric}`` (the registry gate reads one of them).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterable

import torch

from evaluations import datasets as ds
from evaluations.benchmarks import BENCHMARKS, get_benchmark
from evaluations.embedding import embed_images
from evaluations.image_checks import check_images
from evaluations.plots import metric_bars, retrieval_grid
from evaluations.protocol import text_protocol
from evaluations.tasks import MANIFEST_TASKS, ManifestFields, Task, get_task
from evaluations.tasks.base import TaskOutput, TextProtocol
from flame.config import EvalConfig
from flame.errors import FlameError

log = logging.getLogger(__name__)


def describe_model(model) -> str:
    image = getattr(getattr(model, "image_config", None), "model", None)
    text = getattr(model, "text_encoder_name", None)
    return f"flame[{image}|{text}]" if image else type(model).__name__


def evaluate_dataset(
    model,
    task: str,
    data,
    name: str,
    config: EvalConfig | None = None,
    out_dir: str | Path | None = None,
    skip_missing: bool = False,
    limit: int | None = None,
    pretrained: str = "",
    plot_prefix: str = "",
    image_memo: dict[tuple[str, str], torch.Tensor] | None = None,
    benchmark: str | None = None,
    max_pixels: int | None = None,
) -> dict:
    """Check images, score ``data`` with ``task``, draw plots into ``out_dir``; one result dict.

    ``image_memo`` ((features, image path) -> embedding) lets several benchmarks over the
    same images in one run embed each image once per kind of features. ``benchmark``: the
    registered benchmark this is, whose own entry in ``eval.text_protocols`` (if any)
    overrides the task's. ``max_pixels``: larger images are unreadable (``image.max_pixels``).
    Every skip (rows without text, unreadable images) is counted in ``details`` and logged
    as one warning per kind.
    """
    config = config or EvalConfig()
    spec = get_task(task)
    protocol = text_protocol(config, task, benchmark)
    data, details = select_data(spec, data, name, limit=limit, skip_missing=skip_missing, max_pixels=max_pixels)
    output = score_data(model, spec, data, name, config, protocol, image_memo=image_memo, max_pixels=max_pixels)
    if spec.image_features is not None:
        details["image_features"] = spec.image_features
    result = {
        "dataset": name,
        "model": describe_model(model),
        "pretrained": pretrained,
        "task": spec.json_name,
        "text_protocol": protocol.describe(model) if spec.uses_text else None,
        "metrics": output.metrics,
        "details": {**output.details, **details},
        "plots": [],
    }
    if out_dir is not None and config.plots:
        result["plots"] = _plots(output, name, Path(out_dir), plot_prefix, max_pixels)
    return result


def select_data(task: Task, data, name: str, *, limit: int | None = None, skip_missing: bool = False,
                max_pixels: int | None = None) -> tuple[object, dict]:
    """``data`` as ``task`` scores it: its first ``limit`` images (or text pairs), and only the
    images that read (``max_pixels``: larger ones do not; any that fails raises unless
    ``skip_missing``); with the skips counted for the result's ``details``, each kind logged once."""
    details: dict = {"skipped_rows_without_text": _skipped_rows(data)}
    if details["skipped_rows_without_text"]:
        log.warning("%s: skipped %d rows without text (details.skipped_rows_without_text)",
                    name, details["skipped_rows_without_text"])
    if task.image_features is None:
        if limit:
            data = [ds.TextPairSet(p.name, p.queries[:limit], p.targets[:limit], p.skipped_rows) for p in data]
        return data, details
    if limit:
        data = data.subset(list(range(min(limit, len(data.images)))))
    check = check_images(data.images, skip_missing=skip_missing, what=name, max_pixels=max_pixels)
    if check.failed:
        log.warning("%s: skipped %d unreadable images (details.skipped_images), e.g. %s: %s",
                    name, len(check.failed), *check.failed[0])
        data = data.subset(check.ok)
    details["skipped_images"] = len(check.failed)
    details["skipped_image_examples"] = [f"{ref}: {why}" for ref, why in check.failed[:20]]
    return data, details


def score_data(model, task: Task, data, name: str, config: EvalConfig, protocol: TextProtocol, *,
               image_memo: dict[tuple[str, str], torch.Tensor] | None = None, max_pixels: int | None = None) -> TaskOutput:
    """``task``'s output on ``data`` (as ``select_data`` left it): its images embedded as the task
    asks (read with ``max_pixels``; see ``evaluate_dataset`` for ``image_memo``), then scored."""
    image_emb = None
    if task.image_features is not None:
        image_emb = _embed_images_once(model, data.images, config.batch_size, name, image_memo, task.image_features, max_pixels)
        if not torch.isfinite(image_emb).all():
            raise FlameError(f"{name}: the model's image embeddings hold NaN/Inf; its checkpoint is likely corrupt")
    output = task.run(model, data, config, protocol, image_emb)
    _check_finite(output.metrics, name)
    return output


def _skipped_rows(data) -> int:
    """Rows the loader dropped for want of text (a list: the text-pair sets of one benchmark)."""
    if isinstance(data, list):
        return sum(p.skipped_rows for p in data)
    return getattr(data, "skipped_rows", 0)


def _check_finite(metrics: dict[str, float], name: str) -> None:
    """A NaN result is never reported as one: the model's outputs were not finite."""
    bad = [key for key, value in metrics.items() if not math.isfinite(value)]
    if bad:
        raise FlameError(f"{name}: {bad[0]} = {metrics[bad[0]]} ({len(bad)} non-finite metrics): "
                         "the model's outputs hold NaN/Inf; its checkpoint is likely corrupt")


def _embed_images_once(model, images: list[str], batch_size: int, name: str, memo: dict | None,
                       features: str, max_pixels: int | None = None) -> torch.Tensor:
    memo = {} if memo is None else memo
    todo = list(dict.fromkeys(p for p in images if (features, p) not in memo))
    if todo:
        rows = embed_images(model, todo, batch_size, desc=f"{name}: images", features=features, max_pixels=max_pixels)
        for path, row in zip(todo, rows):
            memo[features, path] = row
    return torch.stack([memo[features, p] for p in images])


def _plots(output: TaskOutput, name: str, out_dir: Path, prefix: str, max_pixels: int | None = None) -> list[str]:
    made = []
    bars = metric_bars(output.metrics, out_dir / f"{prefix}{name}_metrics.png", f"{name} (red: chance)")
    if bars:
        made.append(bars.name)
    if output.examples is not None:
        made.append(retrieval_grid(output.examples, out_dir / f"{prefix}{name}_examples.png",
                                   f"{name}: top-5 images per caption", max_pixels).name)
    return made


def evaluate_benchmark(model, name: str, out_dir: str | Path | None = None, config: EvalConfig | None = None, **kwargs) -> dict:
    """One registered benchmark; its data must exist (else a ``FlameError`` saying where it looked)."""
    config = config or EvalConfig()
    return evaluate_dataset(model, get_benchmark(name).task, load_benchmark(name, config), name, config, out_dir,
                            benchmark=name, **kwargs)


def load_benchmark(name: str, config: EvalConfig):
    """The data of the registered benchmark ``name``, as its loader reads it."""
    bench = get_benchmark(name)
    path = bench.path()
    if not path.exists():
        raise FlameError(f"benchmark {name!r}: data not found at {path} (set FLAME_SHARED_DATA to the folder holding it)")
    return bench.load(path, config)


def expand_names(names: Iterable[str]) -> tuple[list[str], list[dict]]:
    """Benchmark names to run, and the ones ``all`` skips for lack of data (with the reason)."""
    names = [n for name in names for n in name.split(",") if n]
    if not names:
        raise FlameError(f"no benchmark given; available: {', '.join(BENCHMARKS)} (or 'all')")
    if "all" in names:
        run = [b.name for b in BENCHMARKS.values() if b.available()]
        skipped = [{"benchmark": b.name, "reason": f"data not found at {b.path()}"} for b in BENCHMARKS.values() if not b.available()]
        return run, skipped
    for name in names:
        get_benchmark(name)
    return list(dict.fromkeys(names)), []


def evaluate_benchmarks(model, names: Iterable[str], out_dir: str | Path | None = None, config: EvalConfig | None = None, **kwargs) -> dict:
    """Several benchmarks (``all`` = every one whose data exists): results, flat summary, skipped."""
    run, skipped = expand_names(names)
    if skipped:
        log.warning("skipping %d benchmarks whose data is missing ('skipped' in the result): %s",
                    len(skipped), ", ".join(s["benchmark"] for s in skipped))
    kwargs.setdefault("image_memo", {})
    results = [evaluate_benchmark(model, name, out_dir, config, **kwargs) for name in run]
    return {"results": results, "summary": summarize(results), "skipped": skipped}


def summarize(results: list[dict]) -> dict[str, float]:
    return {f"{r['dataset']}/{k}": v for r in results for k, v in r["metrics"].items()}


def evaluate_manifest(
    model,
    manifest: str | Path,
    task: str,
    out_dir: str | Path | None = None,
    config: EvalConfig | None = None,
    caption_field: str | None = None,
    label_field: str | None = None,
    languages: list[str] | None = None,
    **kwargs,
) -> dict:
    """A user's JSONL manifest scored with one task (see ``MANIFEST_TASKS``)."""
    if task not in MANIFEST_TASKS:
        raise FlameError(f"unknown task {task!r} for a manifest; available: {', '.join(MANIFEST_TASKS)}")
    name = Path(manifest).stem
    data = get_task(task).load_manifest(Path(manifest), name, ManifestFields(caption_field, label_field, languages))
    return evaluate_dataset(model, task, data, name, config, out_dir, **kwargs)


def with_summary(result: dict) -> dict:
    """A single result with its flat summary added, so every result file has ``summary``."""
    return {**result, "summary": summarize([result])}
