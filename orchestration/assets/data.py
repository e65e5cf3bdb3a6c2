"""Data assets, one partition per data shard: a manifest chunk, its images as a webdataset
shard (img2dataset), and its captions embedded by the frozen LLM. Each calls its step in
``flame.app.pipeline`` and records what it made.

Built from the configuration (``data_assets``): the download's retry policy comes from it.
The embedding step holds a slot of the ``flame-llm`` pool, so one LLM loads at a time.
"""

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    Backoff,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)

from flame.config import FlameConfig
from flame.data.data_shards import chunk_for_key
from orchestration.code_versions import code_version
from orchestration.metadata import md_table
from orchestration.partitions import DATA_SHARDS
from orchestration.pools import LLM_POOL
from orchestration.resources import FlameConfigResource, StorageResource

DATA_GROUP = "data"


def data_asset(**kwargs):
    """An asset with one partition per data shard, in the data group."""
    return asset(partitions_def=DATA_SHARDS, group_name=DATA_GROUP, **kwargs)


@data_asset(kinds={"json"}, code_version=code_version("flame.data.manifest"),
            description="One data shard's rows of a manifest, URLs made absolute (file:// for local paths).")
def manifest(context: AssetExecutionContext, flame_config: FlameConfigResource, storage: StorageResource) -> MaterializeResult:
    config = flame_config.load()
    chunk = chunk_for_key(config, context.partition_key)
    from flame.app import pipeline

    made = pipeline.write_data_shard_manifest(config, storage.paths(config), chunk)
    return MaterializeResult(
        metadata={
            "source": MetadataValue.path(str(chunk.source)),
            "rows": f"{chunk.start}..{chunk.stop - 1}",
            "count": made["count"],
            "usable": made["usable"],
            "skipped": made["skipped"],
            "path": MetadataValue.path(str(made["path"])),
            "preview": MetadataValue.md(md_table([{"url": r["url"], "caption": r["caption"]} for r in made["rows"][:5]])),
        },
        data_version=DataVersion(made["sha256"][:16]),
    )


def download_retry_policy(config: FlameConfig) -> RetryPolicy:
    orchestration = config.orchestration
    return RetryPolicy(max_retries=orchestration.download_retries, delay=orchestration.download_retry_delay_s,
                       backoff=Backoff.EXPONENTIAL)


def image_shards_asset(config: FlameConfig) -> AssetsDefinition:
    """The download asset, retried per ``orchestration.download_retries``."""
    return data_asset(
        name="image_shards", deps=[manifest], kinds={"webdataset"}, retry_policy=download_retry_policy(config),
        code_version=code_version("flame.data.download", "flame.data.download_layout", "flame.data.download_summary",
                                  "flame.data.img2dataset_run", "flame.data.img2dataset_patch", "flame.data.shards"),
        description="The shard's images fetched and resized by img2dataset, as a webdataset tar in the shards folder.",
    )(download_image_shard)


def download_image_shard(context: AssetExecutionContext, flame_config: FlameConfigResource, storage: StorageResource) -> MaterializeResult:
    config = flame_config.load()
    from flame.app import pipeline
    from flame.data.download import format_summary

    made = pipeline.download_data_shard(config, storage.paths(config), context.partition_key)
    context.log.info(format_summary(made))
    seconds = made["duration_s"]
    return MaterializeResult(
        data_version=DataVersion(made["shard_sha256"][:16]),
        metadata={
            "shard": MetadataValue.path(str(made["shard"])),
            "shard_sha256": made["shard_sha256"],
            "shard_bytes": made["shard_bytes"],
            "count": made["total"],
            "success": made["success"],
            "failed": made["failed"],
            "success_rate": float(made["success_rate"]),
            "failures": MetadataValue.json(made["failures"]),
            "seconds": round(seconds, 2),
            "images_per_second": round(made["success"] / seconds, 2) if seconds > 0 else 0.0,
            "shards": MetadataValue.json([str(p) for p in made["published"]]),
            "summary": MetadataValue.path(str(made["summary_file"])),
            "distributor": config.data.distributor,
        }
    )


@data_asset(deps=["image_shards"], kinds={"safetensors"}, pool=LLM_POOL,
            code_version=code_version("flame.text"),
            description="The shard's captions embedded by the frozen LLM (all facets, L2-normalised, fp16).")
def caption_embeddings(context: AssetExecutionContext, flame_config: FlameConfigResource, storage: StorageResource) -> MaterializeResult:
    config = flame_config.load()
    # Always (re)computed: this partition is being materialised because its shard is new or changed.
    from flame.app import pipeline

    made = pipeline.embed_data_shards(config, storage.paths(config), [context.partition_key], recompute=True)
    seconds = made["seconds"]
    return MaterializeResult(
        metadata={
            "store": MetadataValue.path(made["store"]),
            "fingerprint": made["fingerprint"],
            "count": made["samples"],
            "K": made["K"],
            "D": made["D"],
            "prompts": made["prompts"],
            "tokens": made["tokens"],
            "truncated": made["truncated"],
            "skipped_empty": made["skipped_empty"],
            "seconds": round(seconds, 2),
            "prompts_per_second": round(made["prompts"] / seconds, 2) if seconds > 0 else 0.0,
            "workers": MetadataValue.json(made["workers"]),
        }
    )


def data_assets(config: FlameConfig) -> list[AssetsDefinition]:
    """manifest -> image_shards -> caption_embeddings, one partition per data shard."""
    return [manifest, image_shards_asset(config), caption_embeddings]
