"""Which text side each evaluation uses: the paper's protocol, configurable per task and benchmark.

By default (``eval.text_protocols``) English retrieval embeds texts with the long facet
set, its K hidden states averaged then L2-normalised; multilingual retrieval and zero-shot
classification use the raw prompt, the latter over ``eval.templates`` class templates.
A benchmark's own name in ``eval.text_protocols`` overrides its task's entry. Every result
records the protocol that produced it.
"""

from __future__ import annotations

from evaluations.benchmarks import BENCHMARKS
from evaluations.tasks import TASKS, get_task
from evaluations.tasks.base import TextProtocol
from flame.config import RAW_FACET_SET, EvalConfig
from flame.errors import FlameError


def check_protocol_keys(config: EvalConfig) -> None:
    """Every key of ``eval.text_protocols`` names a task or a benchmark."""
    known = set(TASKS) | set(BENCHMARKS)
    for key in config.text_protocols:
        if key not in known:
            raise FlameError(
                f"eval.text_protocols.{key}: not a task ({', '.join(TASKS)}) or a benchmark name"
            )


def text_protocol(config: EvalConfig, task: str, benchmark: str | None = None) -> TextProtocol:
    """The text side of ``task`` (as run for ``benchmark``, when it is one)."""
    check_protocol_keys(config)
    chosen = config.text_protocols
    facet_set = chosen.get(benchmark or "", chosen.get(task, RAW_FACET_SET))
    templates = config.templates if get_task(task).class_templates else None
    return TextProtocol(facet_set, config.facet_pooling, templates)
