"""The Dagster executor named by ``orchestration.executor`` (configuration, not code)."""

from __future__ import annotations

import importlib
import os

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

from flame import cluster
from flame.config import FlameConfig, deep_merge
from flame.errors import FlameError

BUILTIN = {"in_process": in_process_executor, "multiprocess": multiprocess_executor}
# What a step's process needs of the instance: $DAGSTER_HOME, and the PostgreSQL settings
# deploy/dagster.yaml reads from the environment.
INSTANCE_PREFIXES = ("DAGSTER_HOME", "DAGSTER_PG_")


def executor_from_config(config: FlameConfig) -> ExecutorDefinition:
    """``in_process``, ``multiprocess``, ``ray`` or ``module:attribute`` (e.g. ``dagster_k8s:k8s_job_executor``)."""
    name = config.orchestration.executor
    extra = config.orchestration.executor_config
    if name == "ray":
        return ray_step_executor(config)
    if name in BUILTIN:
        executor = BUILTIN[name]
    else:
        module_name, _, attr = name.partition(":")
        if not attr:
            raise FlameError(f"orchestration.executor={name!r}: use in_process, multiprocess, ray or module:attribute")
        try:
            executor = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise FlameError(f"orchestration.executor={name!r} cannot be loaded ({exc}); is its package installed?") from None
        if not isinstance(executor, ExecutorDefinition):
            raise FlameError(f"orchestration.executor={name!r} is not a Dagster executor")
    return executor.configured(extra) if extra else executor


def ray_step_executor(config: FlameConfig) -> ExecutorDefinition:
    """dagster-ray's executor: every step a Ray job (``dagster api execute_step``) on the cluster
    at ``orchestration.cluster_address`` (else $RAY_ADDRESS), its process finding this code on
    PYTHONPATH and given the variables that locate the storage, MLflow and the configuration
    and the instance (their values as the run's process has them); ``executor_config`` over that."""
    try:
        from dagster_ray import ray_executor
    except ImportError as exc:
        raise FlameError(f"orchestration.executor='ray' needs dagster-ray ({exc}); install the cluster extra") from None
    env = cluster.worker_env()
    forwarded = sorted(k for k in env if k != "PYTHONPATH") + sorted(k for k in os.environ if k.startswith(INSTANCE_PREFIXES))
    ray = {"env_vars": forwarded, "runtime_env": {"env_vars": {"PYTHONPATH": env["PYTHONPATH"]}}}
    if config.orchestration.cluster_address:
        ray["address"] = config.orchestration.cluster_address
    return ray_executor.configured(deep_merge({"ray": ray}, config.orchestration.executor_config))
