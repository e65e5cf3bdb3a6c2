"""The one Dagster ``Definitions`` of the FLAME pipeline; this module only assembles.

``dagster dev -m orchestration.definitions`` loads ``defs``, which reads the configuration
once, when the definitions are built: params.yaml ($FLAME_CONFIG, $FLAME_PROFILE), the
storage root from $FLAME_STORAGE_ROOT or the profile, MLflow from $MLFLOW_TRACKING_URI or
the profile.

Loading them imports no torch, MLflow or img2dataset: the webserver, the daemon and every
step's process load these definitions, and each step imports what it runs (a check's step
then starts in about a second instead of seven).
"""

import dagster as dg

from flame.config import FlameConfig
from orchestration.assets.data import data_assets
from orchestration.assets.model import model_assets
from orchestration.checks import ALL_CHECKS
from orchestration.executors import executor_from_config
from orchestration.jobs import ingest_job, promote_job, rollback_job, train_job
from orchestration.resources import build_resources, definition_config
from orchestration.schedules import retrain_schedule
from orchestration.sensors import new_manifest_sensor, retrain_on_new_data


def pipeline_assets(config: FlameConfig) -> list[dg.AssetsDefinition]:
    """The six assets, in pipeline order."""
    return data_assets(config) + model_assets(config)


def build_definitions(config: FlameConfig, resources: dict | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=pipeline_assets(config),
        asset_checks=ALL_CHECKS,
        jobs=[ingest_job, train_job, promote_job, rollback_job],
        schedules=[retrain_schedule(config)],
        sensors=[new_manifest_sensor(config), retrain_on_new_data(config)],
        resources=resources or build_resources(),
        executor=executor_from_config(config),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(definition_config())
