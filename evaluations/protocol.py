"""Which text side each evaluation uses: the paper's protocol, configurable per task and benchmark.

By default (``eval.text_protocols``) English retrieval embeds texts with the long facet
set, its K hidden states averaged then L2-normalised; multilingual retrieval and zero-shot
classification use the raw prompt, the latter over ``eval.templates`` class templates.
A benchmark's own name in ``eval.text_protocols`` overrides its task's entry. Every result
records the protocol that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass

from evaluations.benchmarks import BENCHMARKS
from evaluations.tasks import TASK_JSON_NAMES
from evaluations.templates import get_templates
from flame.config import RAW_FACET_SET, EvalConfig
from flame.errors import FlameError
from flame.text_modes.facet_pooling import MEAN_THEN_NORMALIZE


@dataclass(frozen=True)
class TextProtocol:
    facet_set: str = RAW_FACET_SET
    pooling: str = MEAN_THEN_NORMALIZE
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


def check_protocol_keys(config: EvalConfig) -> None:
    """Every key of ``eval.text_protocols`` names a task or a benchmark."""
    known = set(TASK_JSON_NAMES) | set(BENCHMARKS)
    for key in config.text_protocols:
        if key not in known:
            raise FlameError(
                f"eval.text_protocols.{key}: not a task ({', '.join(TASK_JSON_NAMES)}) or a benchmark name"
            )


def text_protocol(config: EvalConfig, task: str, benchmark: str | None = None) -> TextProtocol:
    """The text side of ``task`` (as run for ``benchmark``, when it is one)."""
    check_protocol_keys(config)
    chosen = config.text_protocols
    facet_set = chosen.get(benchmark or "", chosen.get(task, RAW_FACET_SET))
    templates = config.templates if task == "zeroshot_classification" else None
    return TextProtocol(facet_set, config.facet_pooling, templates)
