"""The evaluation tasks, each decided in one place: ``TASKS`` says, per task, how it runs, the
name its results carry, which image features it embeds, how a user's manifest is read for it,
and which of its metrics it scores per query (those a promotion gate can use).

One module per task does the scoring. This module stays light (it imports the task modules,
which load torch, only when a task runs), because the command line lists the tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from evaluations import datasets as ds
from evaluations.hits import ACCURACY_METRICS, RECALL_METRICS
from evaluations.tasks.base import BACKBONE, EMBEDDING, TaskOutput, TextProtocol
from flame.config import EvalConfig
from flame.errors import FlameError

# (model, data, eval config, text protocol, image features or None) -> TaskOutput
TaskRun = Callable[[Any, Any, EvalConfig, TextProtocol, Any], TaskOutput]


@dataclass(frozen=True)
class ManifestFields:
    """Which keys of a user's manifest hold what (``flame evaluate --caption-field`` etc.)."""

    caption_field: str | None = None
    label_field: str | None = None
    languages: list[str] | None = None


@dataclass(frozen=True)
class Task:
    name: str  # --task, and a key of eval.text_protocols
    json_name: str  # the ``task`` of a result: CLIP_benchmark's name where it has one
    run: TaskRun
    image_features: str | None = EMBEDDING  # what its images are embedded as; None: it has no images
    load_manifest: Callable[[Path, str, ManifestFields], Any] | None = None  # None: benchmarks only
    per_query_metrics: tuple[str, ...] = ()  # what TaskOutput.per_query can hold
    class_templates: bool = False  # its texts are class names in eval.templates
    uses_text: bool = True  # False: image features alone, so a result records no text protocol


# The task modules load torch: each is imported when its task runs.

def _retrieval(model, data, config: EvalConfig, protocol: TextProtocol, image_emb) -> TaskOutput:
    from evaluations.tasks.retrieval import evaluate_retrieval

    return evaluate_retrieval(model, data, image_emb, protocol, config.batch_size, config.example_queries, config.text_cache)


def _multilingual(model, data, config: EvalConfig, protocol: TextProtocol, image_emb) -> TaskOutput:
    from evaluations.tasks.multilingual_retrieval import evaluate_multilingual

    return evaluate_multilingual(model, data, image_emb, protocol, config.batch_size, config.text_cache)


def _zeroshot(model, data, config: EvalConfig, protocol: TextProtocol, image_emb) -> TaskOutput:
    from evaluations.tasks.zeroshot_classification import evaluate_zeroshot

    return evaluate_zeroshot(model, data, image_emb, protocol, config.batch_size, config.text_cache)


def _linear_probe(model, data, config: EvalConfig, protocol: TextProtocol, image_emb) -> TaskOutput:
    from evaluations.tasks.linear_probe import evaluate_linear_probe

    return evaluate_linear_probe(data, image_emb, config.linear_probe_train_per_class, config.linear_probe_c)


def _text_pairs(model, data, config: EvalConfig, protocol: TextProtocol, image_emb) -> TaskOutput:
    from evaluations.tasks.text_pair_retrieval import evaluate_text_pairs

    return evaluate_text_pairs(model, data, protocol, config.batch_size, cache_texts=config.text_cache)


def _retrieval_manifest(path: Path, name: str, fields: ManifestFields) -> ds.RetrievalSet:
    captions = (fields.caption_field,) if fields.caption_field else ds.DEFAULT_CAPTION_FIELDS
    return ds.load_retrieval(path, name, caption_fields=captions)


def _multilingual_manifest(path: Path, name: str, fields: ManifestFields) -> ds.MultilingualSet:
    return ds.load_multilingual(path, name, languages=fields.languages)


def _classification_manifest(path: Path, name: str, fields: ManifestFields) -> ds.ClassificationSet:
    return ds.load_classification(path, name, label_field=fields.label_field or ds.DEFAULT_LABEL_FIELD)


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("zeroshot_classification", "zeroshot_classification", _zeroshot, load_manifest=_classification_manifest,
         per_query_metrics=ACCURACY_METRICS, class_templates=True),
    Task("retrieval", "zeroshot_retrieval", _retrieval, load_manifest=_retrieval_manifest, per_query_metrics=RECALL_METRICS),
    Task("long_retrieval", "long_retrieval", _retrieval, load_manifest=_retrieval_manifest, per_query_metrics=RECALL_METRICS),
    Task("multilingual_retrieval", "multilingual_retrieval", _multilingual, load_manifest=_multilingual_manifest),
    Task("linear_probe", "linear_probe", _linear_probe, image_features=BACKBONE, load_manifest=_classification_manifest,
         uses_text=False),
    Task("text_pair_retrieval", "text_pair_retrieval", _text_pairs, image_features=None),
)}

# What a user's manifest can be scored with (``flame evaluate --manifest ... --task``).
MANIFEST_TASKS = tuple(name for name, task in TASKS.items() if task.load_manifest is not None)


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise FlameError(f"unknown task {name!r}; available: {', '.join(TASKS)}") from None
