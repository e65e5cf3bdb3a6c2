"""Dagster resources, one per external system: the FLAME configuration (params.yaml), MLflow
(its tracking URI) and the storage root (its layout is ``flame.storage.StoragePaths``).

Every value defaults from the environment so that ``dagster dev``, the demo and the
tests point the same Definitions at different files: ``FLAME_CONFIG`` (params.yaml),
``FLAME_PROFILE``, ``FLAME_STORAGE_ROOT`` and ``MLFLOW_TRACKING_URI``.

Relative paths: those of params.yaml are made absolute by ``load_config`` (against the
params file's folder); a resource value or an environment variable is typed in a shell, so
it is taken relative to the current folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import ConfigurableResource, PipesSubprocessClient

from flame.config import FlameConfig, load_config, repo_root
from flame.paths import normalize_tracking_uri, resolve_path
from flame.storage import StoragePaths


class FlameConfigResource(ConfigurableResource):
    """Which params.yaml and profile the pipeline runs with."""

    params_path: str = ""
    profile: str = ""

    def load(self) -> FlameConfig:
        return load_config(self.params_file(), self.profile or None)

    def params_file(self) -> Path:
        return Path(self.params_path or os.environ.get("FLAME_CONFIG") or repo_root() / "params.yaml").resolve()


class MlflowResource(ConfigurableResource):
    """The MLflow tracking URI: this value, else $MLFLOW_TRACKING_URI, else config.tracking.tracking_uri."""

    tracking_uri: str = ""

    def uri(self, config: FlameConfig) -> str:
        typed = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        return normalize_tracking_uri(typed, Path.cwd()) if typed else config.tracking.tracking_uri


class StorageResource(ConfigurableResource):
    """Where assets live: this root, else $FLAME_STORAGE_ROOT, else config.orchestration.storage_root."""

    root: str = ""

    def paths(self, config: FlameConfig) -> StoragePaths:
        typed = self.root or os.environ.get("FLAME_STORAGE_ROOT")
        return StoragePaths(resolve_path(typed, Path.cwd()) if typed else config.orchestration.storage_root)


def definition_config() -> FlameConfig:
    """The configuration that shapes the definitions themselves (op tags, cron, executor),
    read when the definitions are built: ``$FLAME_CONFIG`` and ``$FLAME_PROFILE``, as the
    configuration resource reads it at run time."""
    return FlameConfigResource().load()


def runtime_config(flame_config: FlameConfigResource, mlflow: MlflowResource) -> FlameConfig:
    """The run's configuration with the tracking URI the MLflow resource resolves."""
    config = flame_config.load()
    config.tracking.tracking_uri = mlflow.uri(config)
    return config


def build_resources(params_path: str = "", profile: str = "", tracking_uri: str = "", storage_root: str = "") -> dict:
    """The resources of the pipeline; empty values fall back to the environment, then the profile."""
    return {
        "flame_config": FlameConfigResource(params_path=params_path, profile=profile),
        "mlflow": MlflowResource(tracking_uri=tracking_uri),
        "storage": StorageResource(root=storage_root),
        "pipes_subprocess_client": PipesSubprocessClient(),
    }
