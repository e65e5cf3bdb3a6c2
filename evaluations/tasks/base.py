"""What an evaluation task is given and what it gives back: the text protocol its texts are
embedded with, the image features it can ask for, and its ``TaskOutput``.

Light on purpose (no torch at import): the task registry, which the command line imports, uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evaluations.hits import QueryHits
from evaluations.templates import get_templates

# Which image features a task scores: the image-text embedding (``encode_image``), or the
# image tower's pooled features before the projector (``encode_image_backbone``), which the
# reference's linear probe uses. ``evaluations.embedding.image_encoder`` maps them to the model.
EMBEDDING = "embedding"
BACKBONE = "backbone"


@dataclass(frozen=True)
class TextProtocol:
    """How a task's texts are embedded (see ``evaluations.protocol``, which resolves it from the configuration)."""

    facet_set: str
    pooling: str
    templates: str | None = None  # zero-shot class templates (a set of evaluations.templates)

    def template_strings(self) -> tuple[str, ...]:
        return get_templates(self.templates) if self.templates else ("{}",)

    def describe(self, model) -> dict:
        """The protocol as written into a result: facet set and its K, pooling, templates."""
        facet_sets = (getattr(model, "text_config", None) or {}).get("facet_sets") or {}
        facets = facet_sets.get(self.facet_set, {}).get("facets")
        out = {
            "text_mode": getattr(model, "text_mode", "flame"),
            "facet_set": self.facet_set,
            "K": len(facets) if facets else None,
            "pooling": self.pooling,
        }
        if self.templates:
            out.update(templates=self.templates, n_templates=len(self.template_strings()))
        return out


@dataclass
class RetrievalExamples:
    """A few text queries with the images ranked highest for them, for the example-grid plot."""

    queries: list[str]
    ranked_images: list[list[str]]
    correct: list[str]


@dataclass
class TaskOutput:
    """A task's metrics and details (written into the result), its example retrievals (plotted),
    and per metric that is a share of queries, the hits it is the score of (for the promotion
    gate; not written into the result: one boolean per query)."""

    metrics: dict[str, float]
    details: dict = field(default_factory=dict)
    examples: RetrievalExamples | None = None
    per_query: dict[str, QueryHits] = field(default_factory=dict)
