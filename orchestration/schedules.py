"""``retrain``: the train -> evaluate -> register job on ``orchestration.retrain_cron``; a tick
with nothing new starts nothing and says so in the tick history. Nothing is new when the
training the registered data shards and the configuration make (its identity,
``flame.train.identity``) is registered already, trained at least ``train.epochs`` epochs."""

import datetime as dt

from dagster import RunRequest, ScheduleDefinition, ScheduleEvaluationContext, SkipReason, schedule

from flame.config import FlameConfig
from flame.errors import FlameError
from flame.storage import StoragePaths
from orchestration.jobs import train_job
from orchestration.lineage import latest_record, metadata_of
from orchestration.partitions import DATA_SHARDS
from orchestration.resources import FlameConfigResource, StorageResource


def nothing_new(instance, config: FlameConfig, paths: StoragePaths) -> str | None:
    """Why a retraining now would be pointless, or None when there is something to train."""
    try:
        from flame.app.pipeline import training_inputs

        inputs = training_inputs(config, paths, instance.get_dynamic_partitions(DATA_SHARDS.name))
    except FlameError as exc:
        return f"cannot train yet: {exc}"
    record = latest_record(instance, "registered_model")
    if record is None:
        return None
    registered = metadata_of(record)
    if registered.get("training_id") != inputs.identity.id or registered.get("trained_epochs", 0) < config.train.epochs:
        return None
    return (f"nothing new: training {inputs.identity.id} (the same {len(inputs.shards)} data shards and settings, "
            f"{registered['trained_epochs']} epochs) is already registered as {registered['registered_model']} "
            f"v{registered['version']} ({registered['decision']})")


def retrain_schedule(config: FlameConfig) -> ScheduleDefinition:
    @schedule(name="retrain", job=train_job, cron_schedule=config.orchestration.retrain_cron,
              execution_timezone="UTC",
              description="Retrain, evaluate and gate on the registered data shards (orchestration.retrain_cron); "
              "skipped when neither the data nor the configuration changed since the last registration.")
    def retrain(context: ScheduleEvaluationContext, flame_config: FlameConfigResource, storage: StorageResource):
        settings = flame_config.load()
        reason = nothing_new(context.instance, settings, storage.paths(settings))
        if reason:
            return SkipReason(reason)
        when = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
        return RunRequest(run_key=f"retrain-{when:%Y%m%dT%H%M%S}")

    return retrain
