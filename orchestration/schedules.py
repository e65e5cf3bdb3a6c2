"""Retraining on a schedule: ``orchestration.retrain_cron`` of the configuration."""

from __future__ import annotations

from dagster import ScheduleDefinition

from flame.config import FlameConfig
from orchestration.assets import definition_config
from orchestration.jobs import train_job

def retrain_schedule_for(config: FlameConfig) -> ScheduleDefinition:
    return ScheduleDefinition(
        name="retrain",
        job=train_job,
        cron_schedule=config.orchestration.retrain_cron,
        execution_timezone="UTC",
        description="Retrain, evaluate and register on all data shards (cron: orchestration.retrain_cron).",
    )


retrain_schedule = retrain_schedule_for(definition_config())
