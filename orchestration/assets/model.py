"""Model assets over the whole data set: train (a Dagster Pipes subprocess, plain Python or
torchrun), evaluate on the configured benchmarks, then log, register and gate in MLflow."""


import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    PipesSubprocessClient,
    asset,
)

from flame import checkpoint
from flame.atomic import write_json
from flame.config import FlameConfig
from flame.errors import FlameError
from orchestration.checks import REGISTRATION_GATES
from orchestration.metadata import latest_metadata, md_table, mlflow_run_link
from orchestration.partitions import DATA_SHARDS
from orchestration.resources import FlameConfigResource, MlflowResource, StoragePaths, StorageResource, runtime_config

MODEL_GROUP = "model"
EVALUATION_FILE = "evaluation.json"


def _launcher(config: FlameConfig) -> list[str]:
    """``orchestration.train_launcher``, its program found beside this Python if not on PATH."""
    launcher = list(config.orchestration.train_launcher) or [sys.executable]
    if not shutil.which(launcher[0]):
        beside = Path(sys.executable).parent / launcher[0]
        if beside.exists():
            launcher[0] = str(beside)
    return launcher


def _training_inputs(context: AssetExecutionContext, paths: StoragePaths) -> tuple[list[str], Path]:
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


def flame_model_asset(train_op_tags: dict) -> AssetsDefinition:
    """The training asset; its op tags (e.g. GPU requests of a Kubernetes executor) come from
    ``orchestration.train_op_tags`` when the definitions are built."""

    @asset(name="flame_model", group_name=MODEL_GROUP, deps=["image_shards", "caption_embeddings"],
           kinds={"pytorch"}, op_tags=train_op_tags,
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
        from flame.mlflow.store import connect
        from orchestration.versioning import record_and_tag

        config = runtime_config(flame_config, mlflow)
        uri = config.tracking.tracking_uri
        connect(config)  # fail before any training starts
        paths = storage.paths(config)
        keys, store = _training_inputs(context, paths)
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
        if (out / checkpoint.LOSS_PLOT_FILE).is_file():
            meta["loss_plot"] = MetadataValue.path(str(out / checkpoint.LOSS_PLOT_FILE))
        return MaterializeResult(metadata=meta)

    return flame_model


@asset(group_name=MODEL_GROUP, deps=["flame_model"], kinds={"json"},
       description="The trained model scored on eval.benchmarks (CLIP_benchmark-style JSON, plots); "
       "metrics logged to the training's MLflow run.")
def evaluation(context: AssetExecutionContext, flame_config: FlameConfigResource, mlflow: MlflowResource,
               storage: StorageResource) -> MaterializeResult:
    from evaluations.runner import evaluate_benchmarks
    from flame.mlflow.tracker import MlflowTracker
    from flame.model import load as load_model

    config = runtime_config(flame_config, mlflow)
    trained = latest_metadata(context, "flame_model")
    trained_dir = Path(trained["checkpoint"])
    out_dir = storage.paths(config).evaluations / trained_dir.name
    start = time.monotonic()
    result = evaluate_benchmarks(load_model(trained_dir), config.eval.benchmarks, out_dir, config.eval)
    seconds = time.monotonic() - start
    result_file = out_dir / EVALUATION_FILE
    write_json(result_file, result)
    summary = {k: float(v) for k, v in result["summary"].items() if isinstance(v, (int, float))}
    plots = [out_dir / p for r in result["results"] for p in r.get("plots", [])]
    if trained.get("mlflow_run_id"):
        with MlflowTracker(config, run_id=trained["mlflow_run_id"], tracking_uri=config.tracking.tracking_uri) as tracker:
            tracker.log_evaluation(summary, [result_file, *[p for p in plots if p.is_file()]])
    gate = config.registry.gate_metric
    metadata = {
        "checkpoint": MetadataValue.path(str(trained_dir)),
        "result": MetadataValue.path(str(result_file)),
        "metrics": MetadataValue.json(summary),
        "benchmarks": MetadataValue.json([r["dataset"] for r in result["results"]]),
        "seconds": round(seconds, 2),
        "plots": MetadataValue.json([str(p) for p in plots]),
        "table": MetadataValue.md(md_table([{"metric": k, "value": f"{v:.4f}"} for k, v in summary.items()
                                            if "chance" not in k])),
    }
    if gate in summary:
        metadata["gate_metric"] = gate
        metadata["gate_value"] = summary[gate]
    if trained.get("mlflow_run_id"):
        metadata["mlflow_run_id"] = trained["mlflow_run_id"]
    return MaterializeResult(metadata=metadata)


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


@asset(group_name=MODEL_GROUP, deps=["evaluation"], kinds={"mlflow"},
       description="The model logged to MLflow (pyfunc) and registered: alias challenger, and champion "
       "when it beats the current champion on registry.gate_metric.")
def registered_model(context: AssetExecutionContext, flame_config: FlameConfigResource, mlflow: MlflowResource) -> MaterializeResult:
    from flame.mlflow.gate import register_model
    from flame.mlflow.pyfunc import log_flame_model
    from flame.mlflow.store import connect

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
    model_uri = log_flame_model(config, trained["checkpoint"], run_id=run_id, tracking_uri=uri)
    decision = register_model(config, model_uri, run_id=run_id, metrics=scored.get("metrics") or {}, tracking_uri=uri)
    version = connect(config, uri).get_model_version(decision.model_name, decision.version)
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
