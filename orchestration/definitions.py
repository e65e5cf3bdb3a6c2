"""The one Dagster ``Definitions`` of the FLAME pipeline; this module only assembles.

``dagster dev -m orchestration.definitions`` loads ``defs``, which reads the configuration
once, when the definitions are built: params.yaml ($FLAME_CONFIG, $FLAME_PROFILE), the
storage root from $FLAME_STORAGE_ROOT or the profile, MLflow from $MLFLOW_TRACKING_URI or
the profile.
"""

from __future__ import annotations

import dagster as dg

from flame.config import FlameConfig
from orchestration.assets.data import caption_embeddings, image_shards, manifest
from orchestration.assets.model import evaluation, flame_model_asset, registered_model
from orchestration.automation import ingest_job, new_manifest_sensor, retrain_schedule, train_job
from orchestration.checks import ALL_CHECKS
from orchestration.executors import executor_from_config
from orchestration.resources import build_resources, definition_config


def pipeline_assets(config: FlameConfig) -> list[dg.AssetsDefinition]:
    """The six assets, in pipeline order."""
    return [manifest, image_shards, caption_embeddings,
            flame_model_asset(config.orchestration.train_op_tags), evaluation, registered_model]


def build_definitions(config: FlameConfig, resources: dict | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=pipeline_assets(config),
        asset_checks=ALL_CHECKS,
        jobs=[ingest_job, train_job],
        schedules=[retrain_schedule(config)],
        sensors=[new_manifest_sensor],
        resources=resources or build_resources(),
        executor=executor_from_config(config),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(definition_config())
