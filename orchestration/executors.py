"""The Dagster executor named by ``orchestration.executor`` (configuration, not code)."""

from __future__ import annotations

import importlib

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

from flame.config import FlameConfig
from flame.errors import FlameError

BUILTIN = {"in_process": in_process_executor, "multiprocess": multiprocess_executor}


def executor_from_config(config: FlameConfig) -> ExecutorDefinition:
    """``in_process``, ``multiprocess`` or ``module:attribute`` (e.g. ``dagster_k8s:k8s_job_executor``)."""
    name = config.orchestration.executor
    if name in BUILTIN:
        executor = BUILTIN[name]
    else:
        module_name, _, attr = name.partition(":")
        if not attr:
            raise FlameError(f"orchestration.executor={name!r}: use in_process, multiprocess or module:attribute")
        try:
            executor = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise FlameError(f"orchestration.executor={name!r} cannot be loaded ({exc}); is its package installed?") from None
        if not isinstance(executor, ExecutorDefinition):
            raise FlameError(f"orchestration.executor={name!r} is not a Dagster executor")
    extra = config.orchestration.executor_config
    return executor.configured(extra) if extra else executor
