"""One module per evaluation task; each returns a ``TaskOutput``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RetrievalExamples:
    """A few text queries with the images ranked highest for them, for the example-grid plot."""

    queries: list[str]
    ranked_images: list[list[str]]
    correct: list[str]


@dataclass
class TaskOutput:
    metrics: dict[str, float]
    details: dict = field(default_factory=dict)
    examples: RetrievalExamples | None = None


# What a user's manifest can be scored with (``flame evaluate --manifest ... --task``).
MANIFEST_TASKS = ("zeroshot_classification", "retrieval", "long_retrieval", "multilingual_retrieval", "linear_probe")

# The user-facing task names (``--task``) and the ``task`` written in result JSON, which is
# CLIP_benchmark's name where it has one.
TASK_JSON_NAMES = {
    "zeroshot_classification": "zeroshot_classification",
    "retrieval": "zeroshot_retrieval",
    "long_retrieval": "long_retrieval",
    "multilingual_retrieval": "multilingual_retrieval",
    "linear_probe": "linear_probe",
    "text_pair_retrieval": "text_pair_retrieval",
}
