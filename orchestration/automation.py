"""How the pipeline runs by itself: its two jobs, the retraining schedule and the new-data sensor.

- ``ingest_data_shard`` (partitioned): manifest chunk -> img2dataset shard -> embeddings;
- ``train_evaluate_register``: train on every data shard, evaluate, register and gate;
- ``retrain``: that job on ``orchestration.retrain_cron``;
- ``new_manifest``: a manifest landing in ``orchestration.incoming_dir`` (or changing there)
  becomes new data-shard partitions and one ingest run per shard; once every shard is
  embedded and some embedding is newer than the model, it asks for a training run.
"""


import json

from dagster import (
    AssetKey,
    AssetSelection,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    sensor,
)

from flame.config import FlameConfig
from orchestration.partitions import DATA_SHARDS, discover_chunks, file_digest, incoming_manifests
from orchestration.resources import FlameConfigResource

INGEST_ASSETS = ["manifest", "image_shards", "caption_embeddings"]
MODEL_ASSETS = ["flame_model", "evaluation", "registered_model"]

ingest_job = define_asset_job(
    "ingest_data_shard",
    selection=AssetSelection.assets(*INGEST_ASSETS),
    partitions_def=DATA_SHARDS,
    description="Manifest chunk -> img2dataset shard -> caption embeddings, for one data shard.",
)

train_job = define_asset_job(
    "train_evaluate_register",
    selection=AssetSelection.assets(*MODEL_ASSETS),
    description="Train on every data shard, evaluate, register (and promote if it beats the champion).",
)


def retrain_schedule(config: FlameConfig) -> ScheduleDefinition:
    return ScheduleDefinition(
        name="retrain",
        job=train_job,
        cron_schedule=config.orchestration.retrain_cron,
        execution_timezone="UTC",
        description="Retrain, evaluate and register on all data shards (cron: orchestration.retrain_cron).",
    )


def _latest_timestamp(instance, key: str) -> float | None:
    event = instance.get_latest_materialization_event(AssetKey(key))
    return event.timestamp if event is not None else None


def training_due(instance) -> str | None:
    """A run key when all data shards are embedded and the data is newer than the model."""
    keys = set(instance.get_dynamic_partitions(DATA_SHARDS.name))
    if not keys or not keys <= instance.get_materialized_partitions(AssetKey("caption_embeddings")):
        return None
    data_time = _latest_timestamp(instance, "caption_embeddings")
    model_time = _latest_timestamp(instance, "flame_model")
    if model_time is not None and data_time <= model_time:
        return None
    return f"train-after-{data_time:.3f}"


@sensor(
    name="new_manifest",
    jobs=[ingest_job, train_job],
    minimum_interval_seconds=60,
    description="Watches orchestration.incoming_dir: new manifests -> new data shards -> ingest runs; then retrain.",
)
def new_manifest_sensor(context: SensorEvaluationContext, flame_config: FlameConfigResource):
    config = flame_config.load()
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    current = {str(p): file_digest(p) for p in incoming_manifests(config)}
    changed = [p for p in incoming_manifests(config) if seen.get(str(p)) != current[str(p)]]
    requests: list[RunRequest] = []
    partition_requests = []
    if changed:
        chunks = discover_chunks(config, changed)
        known = set(context.instance.get_dynamic_partitions(DATA_SHARDS.name))
        new_keys = [c.key for c in chunks if c.key not in known]
        if new_keys:
            partition_requests.append(DATA_SHARDS.build_add_request(new_keys))
        for chunk in chunks:
            requests.append(RunRequest(
                job_name=ingest_job.name,
                partition_key=chunk.key,
                run_key=f"{chunk.key}:{current[str(chunk.source)]}",
                tags={"flame/manifest": str(chunk.source)},
            ))
    else:
        due = training_due(context.instance)
        if due:
            requests.append(RunRequest(job_name=train_job.name, run_key=due))
    if not requests:
        return SkipReason("no new manifest in the incoming folder, and the model is up to date")
    return SensorResult(run_requests=requests, dynamic_partitions_requests=partition_requests,
                        cursor=json.dumps(current, sort_keys=True))
