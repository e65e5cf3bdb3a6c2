"""The one Dagster ``Definitions`` object of the FLAME pipeline.

``dagster dev -m orchestration.definitions`` (or ``-w workspace.yaml``) loads it; the
configuration comes from params.yaml ($FLAME_CONFIG, $FLAME_PROFILE), the storage root
from $FLAME_STORAGE_ROOT or the profile, MLflow from $MLFLOW_TRACKING_URI or the profile.
"""

from __future__ import annotations

from dagster import Definitions, PipesSubprocessClient

from orchestration.assets import (
    caption_embeddings,
    definition_config,
    evaluation,
    flame_model,
    image_shards,
    manifest,
    registered_model,
)
from orchestration.checks import ALL_CHECKS
from orchestration.executors import executor_from_config
from orchestration.jobs import ingest_job, train_job
from orchestration.resources import FlameConfigResource, MlflowResource, StorageResource
from orchestration.schedules import retrain_schedule
from orchestration.sensors import new_manifest_sensor

ASSETS = [manifest, image_shards, caption_embeddings, flame_model, evaluation, registered_model]


def default_resources() -> dict:
    return {
        "flame_config": FlameConfigResource(),
        "mlflow": MlflowResource(),
        "storage": StorageResource(),
        "pipes_subprocess_client": PipesSubprocessClient(),
    }


defs = Definitions(
    assets=ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=[ingest_job, train_job],
    schedules=[retrain_schedule],
    sensors=[new_manifest_sensor],
    resources=default_resources(),
    executor=executor_from_config(definition_config()),
)
