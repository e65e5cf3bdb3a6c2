"""The pipeline's jobs: ingest one data shard; train, evaluate and register; and the registry's
own two, promote and rollback (the same actions as ``flame registry promote|rollback``)."""

from dagster import AssetSelection, Config, OpExecutionContext, define_asset_job, job, op
from pydantic import Field

from orchestration.partitions import DATA_SHARDS
from orchestration.resources import FlameConfigResource, MlflowResource, runtime_config

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
    description="Train on the registered data shards, evaluate, register and gate against the champion.",
)


class PromoteConfig(Config):
    version: int | None = Field(None, description="make this version the champion by hand (bypasses the gate); "
                                "empty: score the challenger beside the champion and let the gate decide")


@op(description="Promote: gate the challenger against the champion, or force a version to champion.")
def promote_champion(context: OpExecutionContext, config: PromoteConfig, flame_config: FlameConfigResource,
                     mlflow: MlflowResource) -> dict:
    from flame.app import promotion

    settings = runtime_config(flame_config, mlflow)
    if config.version is None:
        decision = promotion.gate_challenger(settings)
    else:
        decision = promotion.promote(settings, version=config.version)
    context.log.info(f"{decision.decision}: {decision.reason}")
    return decision.to_dict()


@op(description="Roll the champion back to the version it replaced (also after a hand-moved alias).")
def rollback_champion(context: OpExecutionContext, flame_config: FlameConfigResource, mlflow: MlflowResource) -> dict:
    from flame.app import promotion

    result = promotion.rollback(runtime_config(flame_config, mlflow))
    context.log.info(f"champion: v{result['from_version']} -> v{result['to_version']}")
    return result


@job(name="promote", description="The registry gate by hand: flame registry promote [--version N].")
def promote_job():
    promote_champion()


@job(name="rollback", description="flame registry rollback: champion back to the previous champion.")
def rollback_job():
    rollback_champion()
