"""Retraining on a schedule: ``orchestration.retrain_cron`` of the configuration."""

from __future__ import annotations

from dagster import ScheduleDefinition

from orchestration.assets import definition_config
from orchestration.jobs import train_job

retrain_schedule = ScheduleDefinition(
    name="retrain",
    job=train_job,
    cron_schedule=definition_config().orchestration.retrain_cron,
    execution_timezone="UTC",
    description="Retrain, evaluate and register on all data shards (cron: orchestration.retrain_cron).",
)
