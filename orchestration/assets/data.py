"""Data assets, one partition per data shard: a manifest chunk, its images as a webdataset
shard (img2dataset), and its captions embedded by the frozen LLM.

Built from the configuration (``data_assets``): the download's retry policy comes from it.
The embedding step holds a slot of the ``flame-llm`` pool, so one LLM loads at a time.
"""


import time
from pathlib import Path

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

from flame.atomic import atomic_path
from flame.config import FlameConfig
from flame.errors import FlameError
from flame.digest import sha256_file
from flame.files import link_or_copy
from orchestration.code_versions import code_version
from orchestration.lineage import upstream
from orchestration.metadata import md_table
from orchestration.partitions import DATA_SHARDS, chunk_for_key
from orchestration.pools import LLM_POOL
from orchestration.resources import FlameConfigResource, StorageResource
from orchestration.training_set import text_config_digest

DATA_GROUP = "data"
PUBLISHED_SUFFIXES = (".tar", ".parquet", "_stats.json")


def data_asset(**kwargs):
    """An asset with one partition per data shard, in the data group."""
    return asset(partitions_def=DATA_SHARDS, group_name=DATA_GROUP, **kwargs)


def _publish(src: Path, dst: Path) -> None:
    """Publish ``src`` at ``dst`` atomically (hard link when the filesystem allows)."""
    with atomic_path(dst, suffix=dst.suffix) as tmp:
        tmp.unlink()
        link_or_copy(src, tmp)


@data_asset(kinds={"json"}, code_version=code_version("flame.data.manifest"),
       description="One data shard's rows of a manifest, URLs made absolute (file:// for local paths).")
def manifest(context: AssetExecutionContext, flame_config: FlameConfigResource, storage: StorageResource) -> MaterializeResult:
    from flame.data.manifest import write_manifest_slice

    config = flame_config.load()
    chunk = chunk_for_key(config, context.partition_key)
    target = storage.paths(config).manifest(context.partition_key)
    checked = write_manifest_slice(chunk.source, chunk.start, chunk.stop, target,
                                   config.data.url_col, config.data.caption_col)
    return MaterializeResult(
        metadata={
            "source": MetadataValue.path(str(chunk.source)),
            "rows": f"{chunk.start}..{chunk.stop - 1}",
            "count": chunk.stop - chunk.start,
            "usable": len(checked.rows),
            "skipped": checked.skipped_count,
            "path": MetadataValue.path(str(target)),
            "preview": MetadataValue.md(md_table([{"url": r["url"], "caption": r["caption"]} for r in checked.rows[:5]])),
        },
        data_version=DataVersion(sha256_file(target)[:16]),
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
    from flame.data.download import SUMMARY_FILE, download_shards, format_summary

    config = flame_config.load()
    key = context.partition_key
    paths = storage.paths(config)
    out = paths.downloads / key
    start = time.monotonic()
    summary = download_shards(paths.manifest(key), out, config.data, progress=False)
    seconds = time.monotonic() - start
    context.log.info(format_summary(summary))
    published = []
    for i, name in enumerate(summary["shards"]):
        # One data shard is one tar; a chunk larger than number_sample_per_shard gets a suffix.
        stem = key if i == 0 else f"{key}_{i}"
        for suffix in PUBLISHED_SUFFIXES:
            src = out / f"{name}{suffix}"
            if src.exists():
                _publish(src, paths.shards / f"{stem}{suffix}")
        published.append(str(paths.shards / f"{stem}.tar"))
    shard = paths.shard(key)
    if not shard.is_file():
        raise FlameError(f"{shard}: img2dataset wrote no shard for {key} ({format_summary(summary)})")
    digest = sha256_file(shard)
    return MaterializeResult(
        data_version=DataVersion(digest[:16]),
        metadata={
            "shard": MetadataValue.path(str(shard)),
            "shard_sha256": digest,
            "shard_bytes": shard.stat().st_size,
            "count": summary["total"],
            "success": summary["success"],
            "failed": summary["failed"],
            "success_rate": float(summary["success_rate"]),
            "failures": MetadataValue.json(summary["failures"]),
            "seconds": round(seconds, 2),
            "images_per_second": round(summary["success"] / seconds, 2) if seconds > 0 else 0.0,
            "shards": MetadataValue.json(published),
            "summary": MetadataValue.path(str(out / SUMMARY_FILE)),
        }
    )


@data_asset(deps=["image_shards"], kinds={"safetensors"}, pool=LLM_POOL,
            code_version=code_version("flame.text"),
            description="The shard's captions embedded by the frozen LLM (all facets, L2-normalised, fp16).")
def caption_embeddings(context: AssetExecutionContext, flame_config: FlameConfigResource, storage: StorageResource) -> MaterializeResult:
    from flame.text.embed import InputShard, embed_shards

    config = flame_config.load()
    paths = storage.paths(config)
    key = context.partition_key
    downloaded = upstream(context, "image_shards", key)
    shard = Path(downloaded["shard"])
    if not shard.is_file():
        raise FlameError(f"{shard}: image shard missing; materialise image_shards [{key}] first")
    # Always (re)computed: this partition is being materialised because its shard is new or changed.
    summary = embed_shards(config.text, [InputShard(key, shard)], paths.embeddings, recompute=True)
    seconds = summary["seconds"]
    return MaterializeResult(
        metadata={
            "store": MetadataValue.path(summary["store"]),
            "fingerprint": summary["fingerprint"],
            "text_config": text_config_digest(config),
            "shard_sha256": downloaded["shard_sha256"],  # which download these captions came from
            "count": summary["samples"],
            "K": summary["K"],
            "D": summary["D"],
            "prompts": summary["prompts"],
            "tokens": summary["tokens"],
            "truncated": summary["truncated"],
            "skipped_empty": summary["skipped_empty"],
            "seconds": round(seconds, 2),
            "prompts_per_second": round(summary["prompts"] / seconds, 2) if seconds > 0 else 0.0,
        }
    )


def data_assets(config: FlameConfig) -> list[AssetsDefinition]:
    """manifest -> image_shards -> caption_embeddings, one partition per data shard."""
    return [manifest, image_shards_asset(config), caption_embeddings]
