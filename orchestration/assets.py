"""The pipeline's assets: thin wrappers over ``flame/`` that attach metadata.

manifest -> image_shards -> caption_embeddings  (partitioned by data shard)
         -> flame_model -> evaluation -> registered_model  (the whole data set)

Assets pass data through files under the storage root, not Dagster's IO managers, so
a failed step leaves every earlier asset valid on disk and a re-run picks up from it.
Later assets find the outputs of earlier ones in their latest materialisation's metadata.
"""

import hashlib
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    PipesSubprocessClient,
    asset,
)

from flame.atomic import atomic_path, write_json
from flame.config import FlameConfig, load_config
from flame.errors import FlameError
from orchestration.partitions import DATA_SHARDS, chunk_for_key
from orchestration.resources import FlameConfigResource, MlflowResource, StoragePaths, StorageResource

DATA_GROUP = "data"
MODEL_GROUP = "model"


def definition_config() -> FlameConfig:
    """The configuration that shapes the definitions themselves (op tags, cron, executor)."""
    return load_config(os.environ.get("FLAME_CONFIG") or None)


def runtime_config(flame_config: FlameConfigResource, mlflow: MlflowResource) -> FlameConfig:
    config = flame_config.load()
    config.tracking.tracking_uri = mlflow.uri(config)
    return config


def latest_metadata(context: AssetExecutionContext, key: str, partition: str | None = None) -> dict:
    """The metadata values of ``key``'s latest materialisation (an error when there is none)."""
    from dagster import AssetRecordsFilter

    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(key), asset_partitions=[partition] if partition else None), limit=1
    ).records
    if not records or records[0].event_log_entry.asset_materialization is None:
        raise FlameError(f"asset {key!r}{f' [{partition}]' if partition else ''} has not been materialised yet")
    return {k: v.value for k, v in records[0].event_log_entry.asset_materialization.metadata.items()}


def _link_or_copy(src: Path, dst: Path) -> None:
    """Publish ``src`` at ``dst`` atomically (hard link when the filesystem allows)."""
    with atomic_path(dst, suffix=dst.suffix) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            import shutil

            shutil.copyfile(src, tmp)


def _md_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")).replace("|", "/")[:80] for c in cols) + " |")
    return "\n".join(lines)


# ---- data (partitioned by data shard) ---------------------------------------------------


@asset(partitions_def=DATA_SHARDS, group_name=DATA_GROUP, kinds={"json"},
       description="One data shard's rows of a manifest, URLs made absolute (file:// for local paths).")
def manifest(context: AssetExecutionContext, flame_config: FlameConfigResource, storage: StorageResource) -> MaterializeResult:
    from flame.data.manifest import load_manifest, read_rows, resolve_url

    config = flame_config.load()
    paths = storage.paths(config)
    chunk = chunk_for_key(config, context.partition_key)
    rows = read_rows(chunk.source)[chunk.start : chunk.stop]
    url_col = config.data.url_col
    for row in rows:
        col = url_col if url_col in row else "image"
        if isinstance(row.get(col), str) and row[col].strip():
            try:
                row[col] = resolve_url(row[col], chunk.source.resolve().parent)
            except ValueError:
                pass  # load_manifest below reports the row with its number
    target = paths.manifest(context.partition_key)
    text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    with atomic_path(target, suffix=".jsonl") as tmp:
        tmp.write_text(text, encoding="utf-8")
    checked = load_manifest(target, url_col, config.data.caption_col)
    return MaterializeResult(
        metadata={
            "source": MetadataValue.path(str(chunk.source)),
            "rows": f"{chunk.start}..{chunk.stop - 1}",
            "count": len(rows),
            "usable": len(checked.rows),
            "skipped": checked.skipped_count,
            "path": MetadataValue.path(str(target)),
            "preview": MetadataValue.md(_md_table([{"url": r["url"], "caption": r["caption"]} for r in checked.rows[:5]])),
        },
        data_version=_data_version(text),
    )


def _data_version(text: str):
    from dagster import DataVersion

    return DataVersion(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16])


@asset(partitions_def=DATA_SHARDS, group_name=DATA_GROUP, deps=[manifest], kinds={"webdataset"},
       description="The shard's images fetched and resized by img2dataset, as a webdataset tar in the shards folder.")
def image_shards(context: AssetExecutionContext, flame_config: FlameConfigResource, storage: StorageResource) -> MaterializeResult:
    from flame.data.download import download_shards, format_summary

    config = flame_config.load()
    paths = storage.paths(config)
    key = context.partition_key
    out = paths.downloads / key
    start = time.monotonic()
    summary = download_shards(paths.manifest(key), out, config.data, progress=False)
    seconds = time.monotonic() - start
    context.log.info(format_summary(summary))
    published = []
    for i, name in enumerate(summary["shards"]):
        # One data shard is one tar; a chunk larger than number_sample_per_shard gets a suffix.
        stem = key if i == 0 else f"{key}_{i}"
        for src_suffix, dst_suffix in ((".tar", ".tar"), (".parquet", ".parquet"), ("_stats.json", "_stats.json")):
            src = out / f"{name}{src_suffix}"
            if src.exists():
                _link_or_copy(src, paths.shards / f"{stem}{dst_suffix}")
        published.append(str(paths.shards / f"{stem}.tar"))
    return MaterializeResult(
        metadata={
            "count": summary["total"],
            "success": summary["success"],
            "failed": summary["failed"],
            "success_rate": float(summary["success_rate"]),
            "failures": MetadataValue.json(summary["failures"]),
            "seconds": round(seconds, 2),
            "images_per_second": round(summary["success"] / seconds, 2) if seconds > 0 else 0.0,
            "shards": MetadataValue.json(published),
            "summary": MetadataValue.path(str(out / "download_summary.json")),
        }
    )


@asset(partitions_def=DATA_SHARDS, group_name=DATA_GROUP, deps=[image_shards], kinds={"safetensors"},
       description="The shard's captions embedded by the frozen LLM (all facets, L2-normalised, fp16).")
def caption_embeddings(context: AssetExecutionContext, flame_config: FlameConfigResource, storage: StorageResource) -> MaterializeResult:
    from tqdm import tqdm

    from flame.text.embed import InputShard, ShardEmbedder, store_meta
    from flame.text.encoder import TextEncoder
    from flame.text.store import EmbeddingStore

    config = flame_config.load()
    paths = storage.paths(config)
    key = context.partition_key
    shard = paths.shard(key)
    if not shard.is_file():
        raise FlameError(f"{shard}: image shard missing; materialise image_shards [{key}] first")
    start = time.monotonic()
    encoder = TextEncoder.from_config(config.text)
    store = EmbeddingStore.create(paths.embeddings, store_meta(encoder, config.text))
    # Always (re)computed: this partition is being materialised because its shard is new or changed.
    with tqdm(desc=f"embedding {key}", unit="caption", dynamic_ncols=True) as bar:
        result = ShardEmbedder(encoder, config.text, progress=bar).embed(InputShard(key, shard))
    store.write(key, result.keys, result.embeddings, result.stats)
    seconds = time.monotonic() - start
    stats = result.stats
    return MaterializeResult(
        metadata={
            "store": MetadataValue.path(str(store.path)),
            "fingerprint": store.fingerprint,
            "count": len(result.keys),
            "K": store.K,
            "D": store.D,
            "prompts": int(stats.get("prompts", 0)),
            "tokens": int(stats.get("tokens", 0)),
            "truncated": int(stats.get("truncated", 0)),
            "skipped_empty": int(stats.get("skipped_empty", 0)),
            "seconds": round(seconds, 2),
            "prompts_per_second": round(stats.get("prompts", 0) / seconds, 2) if seconds > 0 else 0.0,
        }
    )


# ---- model (the whole data set) ---------------------------------------------------------


def _launcher(config: FlameConfig) -> list[str]:
    """``orchestration.train_launcher``, its program found beside this Python if not on PATH."""
    import shutil

    launcher = list(config.orchestration.train_launcher) or [sys.executable]
    if not shutil.which(launcher[0]):
        beside = Path(sys.executable).parent / launcher[0]
        if beside.exists():
            launcher[0] = str(beside)
    return launcher


def _training_inputs(context: AssetExecutionContext, config: FlameConfig, paths: StoragePaths) -> tuple[list[str], Path]:
    """Every registered data shard must be downloaded and embedded in one store; returns (shards, store)."""
    from flame.text.store import EmbeddingStore

    keys = sorted(context.instance.get_dynamic_partitions(DATA_SHARDS.name))
    if not keys:
        raise FlameError("no data shards registered; materialise the data assets first (or run the new-data sensor)")
    missing = [k for k in keys if not paths.shard(k).is_file()]
    if missing:
        raise FlameError(f"data shards not downloaded yet: {', '.join(missing)}; materialise image_shards for them")
    store_path = Path(latest_metadata(context, "caption_embeddings", keys[0])["store"])
    store = EmbeddingStore.open(store_path)
    unembedded = [k for k in keys if not store.has(k)]
    if unembedded:
        raise FlameError(f"data shards not embedded in {store_path}: {', '.join(unembedded)}; "
                         "materialise caption_embeddings for them")
    return keys, store_path


def training_id(config: FlameConfig, keys: list[str], paths: StoragePaths, store: Path) -> str:
    """Same configuration and same data -> same checkpoint folder, so a re-run resumes it."""
    h = hashlib.sha256()
    h.update(json.dumps({k: config.model_dump(mode="json")[k] for k in ("text", "image", "train", "data")},
                        sort_keys=True).encode())
    h.update(store.name.encode())
    for k in keys:
        h.update(f"{k}:{paths.shard(k).stat().st_size}".encode())
    return h.hexdigest()[:12]


def mlflow_run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"mlflow ui --backend-store-uri {tracking_uri}  ->  #/experiments/{experiment_id}/runs/{run_id}"


@asset(group_name=MODEL_GROUP, deps=[image_shards, caption_embeddings], kinds={"pytorch"},
       op_tags=definition_config().orchestration.train_op_tags,
       description="The FLAME model trained on every data shard, in a Dagster Pipes subprocess "
       "(plain Python, or torchrun per orchestration.train_launcher).")
def flame_model(
    context: AssetExecutionContext,
    flame_config: FlameConfigResource,
    mlflow: MlflowResource,
    storage: StorageResource,
    pipes_subprocess_client: PipesSubprocessClient,
) -> MaterializeResult:
    from flame.config import repo_root
    from flame.tracking_mlflow import check_tracking_uri
    from orchestration.versioning import record_and_tag

    config = runtime_config(flame_config, mlflow)
    uri = config.tracking.tracking_uri
    check_tracking_uri(uri, config.tracking.connect_timeout)  # fail before any training starts
    paths = storage.paths(config)
    keys, store = _training_inputs(context, config, paths)
    out = paths.models / training_id(config, keys, paths, store)
    # Record (dvc add + push) the exact data this training reads; its hashes tag the MLflow run.
    version_tags = record_and_tag(repo_root(), [paths.shards, store], push=True)
    context.log.info(f"training on {len(keys)} data shards into {out}; data versions {version_tags}")
    command = _launcher(config) + [
        "-m", "orchestration.train_step",
        "--config", str(flame_config.params_file()), "--profile", config.profile,
        "--shards", str(paths.shards), "--embeddings", str(store), "--out", str(out),
        "--tracking-uri", uri, "--run-name", f"dagster-{context.run_id[:8]}",
        "--tags-json", json.dumps({**version_tags, "dagster.run_id": context.run_id}),
    ]
    invocation = pipes_subprocess_client.run(context=context, command=command, cwd=str(repo_root()))
    result = invocation.get_materialize_result()
    meta = dict(result.metadata or {})
    raw = {k: getattr(v, "value", v) for k, v in meta.items()}
    if raw.get("mlflow_run_id"):
        meta["mlflow_run"] = MetadataValue.text(mlflow_run_link(uri, raw["mlflow_experiment_id"], raw["mlflow_run_id"]))
    meta["data_shards"] = len(keys)
    meta["data_versions"] = MetadataValue.json(version_tags)
    meta["checkpoint"] = MetadataValue.path(str(out))
    if (out / "loss.png").is_file():
        meta["loss_plot"] = MetadataValue.path(str(out / "loss.png"))
    return MaterializeResult(metadata=meta)


def _tracker_for_run(config: FlameConfig, run_id: str | None):
    if not run_id:
        return None
    from flame.tracking_mlflow import MlflowTracker

    return MlflowTracker(config, run_id=run_id, tracking_uri=config.tracking.tracking_uri)


@asset(group_name=MODEL_GROUP, deps=[flame_model], kinds={"json"},
       description="The trained model scored on eval.benchmarks (CLIP_benchmark-style JSON, plots); "
       "metrics logged to the training's MLflow run.")
def evaluation(context: AssetExecutionContext, flame_config: FlameConfigResource, mlflow: MlflowResource,
               storage: StorageResource) -> MaterializeResult:
    from evaluations.runner import evaluate_benchmarks
    from flame.model import load as load_model

    config = runtime_config(flame_config, mlflow)
    trained = latest_metadata(context, "flame_model")
    checkpoint = Path(trained["checkpoint"])
    out_dir = storage.paths(config).evaluations / checkpoint.name
    start = time.monotonic()
    model = load_model(checkpoint)
    result = evaluate_benchmarks(model, config.eval.benchmarks, out_dir, config.eval)
    seconds = time.monotonic() - start
    result_file = out_dir / "evaluation.json"
    write_json(result_file, result)
    summary = {k: float(v) for k, v in result["summary"].items() if isinstance(v, (int, float))}
    plots = [out_dir / p for r in result["results"] for p in r.get("plots", [])]
    tracker = _tracker_for_run(config, trained.get("mlflow_run_id"))
    if tracker is not None:
        tracker.log_evaluation(summary, [result_file, *[p for p in plots if p.is_file()]])
        tracker.close("FINISHED")
    gate = config.registry.gate_metric
    metadata = {
        "checkpoint": MetadataValue.path(str(checkpoint)),
        "result": MetadataValue.path(str(result_file)),
        "metrics": MetadataValue.json(summary),
        "benchmarks": MetadataValue.json([r["dataset"] for r in result["results"]]),
        "seconds": round(seconds, 2),
        "plots": MetadataValue.json([str(p) for p in plots]),
        "table": MetadataValue.md(_md_table([{"metric": k, "value": f"{v:.4f}"} for k, v in summary.items()
                                             if "chance" not in k])),
    }
    if gate in summary:
        metadata["gate_metric"] = gate
        metadata["gate_value"] = summary[gate]
    if trained.get("mlflow_run_id"):
        metadata["mlflow_run_id"] = trained["mlflow_run_id"]
    return MaterializeResult(metadata=metadata)


@contextmanager
def global_tracking_uri(uri: str):
    """MLflow's registry resolves ``models:/m-...`` sources through the global tracking URI,
    not the client's (an MLflow TODO), so point it at our store while registering."""
    import mlflow

    # set_tracking_uri also exports $MLFLOW_TRACKING_URI; put back exactly what was there.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def blocking_check_failures(context: AssetExecutionContext, check_keys) -> list[str]:
    """Names of blocking checks whose latest evaluation failed (registration must not proceed)."""
    failed = []
    for key in check_keys:
        record = context.instance.get_latest_asset_check_evaluation_record(key)
        if record is None:
            continue
        result = record.evaluation
        if record.status.value == "FAILED" or (result is not None and not result.passed):
            failed.append(f"{key.asset_key.to_user_string()}:{key.name}")
    return failed


@asset(group_name=MODEL_GROUP, deps=[evaluation], kinds={"mlflow"},
       description="The model logged to MLflow (pyfunc) and registered: alias challenger, and champion "
       "when it beats the current champion on registry.gate_metric.")
def registered_model(context: AssetExecutionContext, flame_config: FlameConfigResource, mlflow: MlflowResource) -> MaterializeResult:
    from orchestration.checks import REGISTRATION_GATES
    from flame.mlflow_model import log_flame_model
    from flame.registry import register_model, registry_client

    failed = blocking_check_failures(context, REGISTRATION_GATES)
    if failed:
        raise FlameError(f"registration blocked: check(s) failed: {', '.join(failed)}")
    config = runtime_config(flame_config, mlflow)
    trained = latest_metadata(context, "flame_model")
    scored = latest_metadata(context, "evaluation")
    if scored.get("checkpoint") != trained.get("checkpoint"):
        raise FlameError("the latest evaluation is not of the latest model; materialise evaluation first")
    run_id = trained.get("mlflow_run_id")
    uri = config.tracking.tracking_uri
    client = registry_client(config, uri)
    with global_tracking_uri(uri):
        model_uri = log_flame_model(config, trained["checkpoint"], run_id=run_id, tracking_uri=uri)
        decision = register_model(config, model_uri, run_id=run_id, metrics=scored.get("metrics") or {}, client=client)
    version = client.get_model_version(decision.model_name, decision.version)
    return MaterializeResult(
        metadata={
            "registered_model": decision.model_name,
            "version": int(decision.version),
            "aliases": MetadataValue.json(sorted(version.aliases)),
            "decision": decision.decision,
            "reason": decision.reason,
            "gate_metric": decision.gate_metric,
            "candidate_value": decision.candidate_value if decision.candidate_value is not None else float("nan"),
            "champion_value": decision.champion_value if decision.champion_value is not None else float("nan"),
            "model_uri": model_uri,
            "checkpoint": MetadataValue.path(str(trained["checkpoint"])),
            "metrics": MetadataValue.json(scored.get("metrics") or {}),
            "mlflow_run_id": run_id or "",
        }
    )
