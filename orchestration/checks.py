"""Asset checks, one or more per asset, naming their asset by key. Blocking ones stop the
assets downstream of them in the same run, and keep the automation from materialising them
later (``AutomationCondition.all_deps_blocking_checks_passed``, see ``assets.model``)."""

import math
import warnings

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    asset_check,
)

from flame.locations import fetch_tree, is_url, location
from orchestration.lineage import upstream
from orchestration.partitions import DATA_SHARDS
from orchestration.resources import FlameConfigResource, MlflowResource

# Partitioned checks (one per data shard) are a Dagster preview feature; we rely on it knowingly.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")


@asset_check(asset="manifest", partitions_def=DATA_SHARDS, blocking=False,
             description="Most manifest rows have a URL and a caption.")
def manifest_rows_usable(context: AssetCheckExecutionContext, flame_config: FlameConfigResource) -> AssetCheckResult:
    meta = upstream(context, "manifest", context.partition_key)
    count, usable = int(meta["count"]), int(meta["usable"])
    rate = usable / count if count else 0.0
    return AssetCheckResult(
        passed=rate >= flame_config.load().data.min_success_rate,
        severity=AssetCheckSeverity.WARN,
        metadata={"usable_rate": rate, "usable": usable, "count": count},
    )


@asset_check(asset="image_shards", partitions_def=DATA_SHARDS, blocking=True,
             description="The download success rate reaches data.min_success_rate.")
def download_success_rate(context: AssetCheckExecutionContext, flame_config: FlameConfigResource) -> AssetCheckResult:
    meta = upstream(context, "image_shards", context.partition_key)
    threshold = flame_config.load().data.min_success_rate
    rate = float(meta["success_rate"])
    return AssetCheckResult(
        passed=rate >= threshold,
        metadata={"success_rate": rate, "threshold": threshold, "failed": int(meta["failed"]),
                  "failures": MetadataValue.json(meta.get("failures") or {})},
    )


@asset_check(asset="caption_embeddings", partitions_def=DATA_SHARDS, blocking=True,
             description="Embeddings are finite, one row per key, one key per downloaded image (EmbeddingStore.validate).")
def embeddings_valid(context: AssetCheckExecutionContext) -> AssetCheckResult:
    from flame.text.store import META_FILE, SHARD_SUFFIX, EmbeddingStore

    key = context.partition_key
    meta = upstream(context, "caption_embeddings", key)
    downloaded = int(upstream(context, "image_shards", key)["success"])
    folder = location(meta["store"])
    store = EmbeddingStore.open(fetch_tree(folder, [META_FILE, f"{key}{SHARD_SUFFIX}"]) if is_url(folder) else folder)
    report = store.validate()
    own_errors = [e for e in report["errors"] if e.startswith(f"{key}:") or e.startswith(f"{key}_")]
    keys, _ = store.read(key)
    expected = downloaded - int(meta.get("skipped_empty", 0))  # samples without any caption are counted skips
    return AssetCheckResult(
        passed=not own_errors and len(keys) == expected,
        metadata={"rows": len(keys), "expected_rows": expected, "downloaded_images": downloaded,
                  "errors": MetadataValue.json(own_errors),
                  "store_shards": report["shards"], "store_ok": bool(report["ok"])},
    )


@asset_check(asset="flame_model", blocking=True, description="The training loss went down.")
def training_loss_decreased(context: AssetCheckExecutionContext) -> AssetCheckResult:
    from flame import checkpoint
    from flame.app.pipeline import local_checkpoint

    meta = upstream(context, "flame_model")
    summary = checkpoint.read_summary(local_checkpoint(meta["checkpoint"], [checkpoint.SUMMARY_FILE]))
    losses = [float(x) for x in summary.get("losses") or []]
    if len(losses) >= 2:  # mean loss of the first epoch against the last
        first, last, basis = losses[0], losses[-1], "epoch mean"
    else:  # one epoch: its first step against its last
        first, last, basis = float(summary.get("first_loss") or "nan"), float(summary.get("last_loss") or "nan"), "step"
    return AssetCheckResult(
        passed=math.isfinite(first) and math.isfinite(last) and last < first,
        metadata={"first_loss": first, "last_loss": last, "compared": basis, "epochs": len(losses)},
    )


def chance_pairs(metrics: dict[str, float]) -> dict[str, tuple[float, float]]:
    """``{bench}/m`` -> (value, chance) for every metric that has ``{bench}/chance_m`` beside it."""
    pairs = {}
    for name, value in metrics.items():
        bench, _, metric = name.rpartition("/")
        chance = metrics.get(f"{bench}/chance_{metric}" if bench else f"chance_{metric}")
        if not metric.startswith("chance_") and chance is not None:
            pairs[name] = (float(value), float(chance))
    return pairs


@asset_check(asset="evaluation", blocking=True,
             description="The gate metric beats its chance level (else: every metric with a chance level does).")
def evaluation_above_chance(context: AssetCheckExecutionContext, flame_config: FlameConfigResource) -> AssetCheckResult:
    metrics = upstream(context, "evaluation")["metrics"]
    gate = flame_config.load().registry.gate_metric
    pairs = chance_pairs(metrics)
    if gate in pairs:
        passed = pairs[gate][0] > pairs[gate][1]
    else:
        passed = bool(pairs) and all(v > c for v, c in pairs.values())
    return AssetCheckResult(
        passed=passed,
        metadata={"gate_metric": gate, "compared": MetadataValue.json({k: {"value": v, "chance": c} for k, (v, c) in pairs.items()})},
    )


@asset_check(asset="registered_model", blocking=False, description="The registered model has a champion version.")
def champion_exists(context: AssetCheckExecutionContext, flame_config: FlameConfigResource, mlflow: MlflowResource) -> AssetCheckResult:
    config = flame_config.load()
    from flame.mlflow.registry import CHAMPION, Registry

    aliases = Registry.open(config, mlflow.uri(config)).aliases()
    return AssetCheckResult(passed=CHAMPION in aliases, metadata={"aliases": MetadataValue.json(aliases)})


ALL_CHECKS = [manifest_rows_usable, download_success_rate, embeddings_valid, training_loss_decreased,
              evaluation_above_chance, champion_exists]
