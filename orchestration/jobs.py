"""The two jobs: ingest one data shard (partitioned), and train -> evaluate -> register."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from orchestration.assets import caption_embeddings, evaluation, flame_model, image_shards, manifest, registered_model
from orchestration.partitions import DATA_SHARDS

INGEST_ASSETS = [manifest, image_shards, caption_embeddings]
MODEL_ASSETS = [flame_model, evaluation, registered_model]

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
