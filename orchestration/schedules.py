"""``retrain``: the train -> evaluate -> register job on ``orchestration.retrain_cron``; a tick
with nothing new (same registered data shards, same configuration as the last registered
training) starts nothing and says so in the tick history."""

import datetime as dt

from dagster import RunRequest, ScheduleDefinition, ScheduleEvaluationContext, SkipReason, schedule

from flame.config import FlameConfig
from flame.errors import FlameError
from orchestration.jobs import train_job
from orchestration.lineage import latest_record, metadata_of
from orchestration.resources import FlameConfigResource
from orchestration.training_set import training_fingerprint, training_inputs


def nothing_new(instance, config: FlameConfig) -> str | None:
    """Why a retraining now would be pointless, or None when there is something to train."""
    try:
        inputs = training_inputs(instance, config)
    except FlameError as exc:
        return f"cannot train yet: {exc}"
    training_id = training_fingerprint(config, inputs)
    record = latest_record(instance, "registered_model")
    if record is not None:
        registered = metadata_of(record)
        if registered.get("training_id") == training_id:
            return (f"nothing new: training {training_id} (the same {len(inputs)} data shards and configuration) "
                    f"is already registered as {registered['registered_model']} v{registered['version']} "
                    f"({registered['decision']})")
    return None


def retrain_schedule(config: FlameConfig) -> ScheduleDefinition:
    @schedule(name="retrain", job=train_job, cron_schedule=config.orchestration.retrain_cron,
              execution_timezone="UTC",
              description="Retrain, evaluate and gate on the registered data shards (orchestration.retrain_cron); "
              "skipped when neither the data nor the configuration changed since the last registration.")
    def retrain(context: ScheduleEvaluationContext, flame_config: FlameConfigResource):
        reason = nothing_new(context.instance, flame_config.load())
        if reason:
            return SkipReason(reason)
        when = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
        return RunRequest(run_key=f"retrain-{when:%Y%m%dT%H%M%S}")

    return retrain
