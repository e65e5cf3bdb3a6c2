"""The sensors: manifests become data shards, and new data becomes a retrained model.

- ``new_manifest`` (running by default): registers the data shards of the configured
  manifests (so a fresh instance knows them), and turns
  each manifest that lands in or changes in ``orchestration.incoming_dir`` into new data
  shards and one ingest run per shard (run key: shard + manifest digest, never run twice).
- ``retrain_on_new_data`` (running by default): Dagster's declarative automation of the
  model assets. Each is ``AutomationCondition.eager()``: trained once every registered shard is
  embedded and some embedding is newer than the model, then evaluated and gated.
"""

import json

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from flame.config import FlameConfig
from flame.data.data_shards import configured_manifests, discover_chunks, incoming_manifests
from flame.digest import sha256_file
from orchestration.jobs import MODEL_ASSETS, ingest_job
from orchestration.partitions import DATA_SHARDS
from orchestration.resources import FlameConfigResource


def new_configured_keys(known: set[str], config: FlameConfig) -> list[str]:
    """Data shards of ``orchestration.manifests`` not among the ``known`` ones."""
    return [c.key for c in discover_chunks(config, configured_manifests(config)) if c.key not in known]


def new_manifest_sensor(config: FlameConfig) -> SensorDefinition:
    @sensor(name="new_manifest", job=ingest_job, default_status=DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=config.orchestration.sensor_interval_s,
            description="Registers the configured manifests' data shards; a manifest landing in "
            "orchestration.incoming_dir becomes new data shards and one ingest run each.")
    def new_manifest(context: SensorEvaluationContext, flame_config: FlameConfigResource):
        settings = flame_config.load()
        instance = context.instance
        known = set(instance.get_dynamic_partitions(DATA_SHARDS.name))
        new_keys = new_configured_keys(known, settings)
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        landed = incoming_manifests(settings)
        current = {str(p): sha256_file(p)[:16] for p in landed}
        changed = [p for p in landed if seen.get(str(p)) != current[str(p)]]
        requests = []
        for chunk in discover_chunks(settings, changed) if changed else []:
            if chunk.key not in known and chunk.key not in new_keys:
                new_keys.append(chunk.key)
            requests.append(RunRequest(job_name=ingest_job.name, partition_key=chunk.key, run_key=f"{chunk.key}:{current[str(chunk.source)]}",
                                       tags={"flame/manifest": str(chunk.source)}))
        if not new_keys and not requests:
            return SkipReason(f"no new manifest in {settings.orchestration.incoming_dir}, "
                              f"and all {len(known)} configured data shards are registered")
        context.log.info(f"registering {len(new_keys)} data shards; {len(requests)} ingest runs")
        return SensorResult(run_requests=requests,
                            dynamic_partitions_requests=[DATA_SHARDS.build_add_request(new_keys)] if new_keys else [],
                            cursor=json.dumps(current, sort_keys=True))

    return new_manifest


def retrain_on_new_data(config: FlameConfig) -> AutomationConditionSensorDefinition:
    return AutomationConditionSensorDefinition(
        "retrain_on_new_data", target=AssetSelection.assets(*MODEL_ASSETS),
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=config.orchestration.automation_interval_s,
        description="Trains, evaluates and gates once new data shards are embedded (AutomationCondition.eager).",
    )
