"""Model assets over the registered data shards: train (a Dagster Pipes subprocess, plain
Python or torchrun), evaluate on the configured benchmarks, then log, register and gate in
MLflow, where the challenger and the champion are scored side by side.

Built from the configuration (``model_assets``): the Launchpad's run config defaults to the
profile's values, and the op tags of training come from ``orchestration.train_op_tags``.
Each asset reads what its upstream made in the same run (``orchestration.lineage``) and is
automated: it materialises once its inputs are newer than it and none is missing.
"""


import json
import shutil
import sys
import time
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AutomationCondition,
    Config,
    MaterializeResult,
    MetadataValue,
    PipesSubprocessClient,
    asset,
)
from pydantic import Field

from flame import checkpoint
from flame.atomic import write_json
from flame.config import FlameConfig
from flame.errors import FlameError
from orchestration.checks import REGISTRATION_GATES
from orchestration.code_versions import code_version
from orchestration.lineage import upstream
from orchestration.metadata import inline_png, md_table, mlflow_run_url, mlflow_ui, model_version_url
from orchestration.pools import TRAIN_POOL
from orchestration.resources import FlameConfigResource, MlflowResource, StorageResource, runtime_config
from orchestration.training_set import exclusive, link_training_set, training_fingerprint, training_inputs

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


def training_run_config(config: FlameConfig) -> type[Config]:
    """The Launchpad's config of a training, its defaults the profile's."""

    class TrainingRun(Config):
        epochs: int = Field(config.train.epochs, ge=1, description="train.epochs for this run")
        seed: int = Field(config.train.seed, description="train.seed for this run")

    return TrainingRun


def evaluation_run_config(config: FlameConfig) -> type[Config]:
    class EvaluationRun(Config):
        benchmarks: list[str] = Field(list(config.eval.benchmarks), description="eval.benchmarks for this run")

    return EvaluationRun


def with_overrides(config: FlameConfig, section: str, values: dict) -> FlameConfig:
    return config.model_copy(update={section: getattr(config, section).model_copy(update=values)})


def flame_model_asset(config: FlameConfig) -> AssetsDefinition:
    TrainingRun = training_run_config(config)

    @asset(name="flame_model", group_name=MODEL_GROUP, deps=["image_shards", "caption_embeddings"],
           kinds={"pytorch"}, op_tags=config.orchestration.train_op_tags, pool=TRAIN_POOL,
           automation_condition=AutomationCondition.eager(),
           code_version=code_version("flame.train", "flame.model", "flame.losses", "orchestration.train_step"),
           description="The FLAME model trained on exactly the registered data shards, in a Dagster Pipes "
           "subprocess (plain Python, or torchrun per orchestration.train_launcher).")
    def flame_model(
        context: AssetExecutionContext,
        config: TrainingRun,
        flame_config: FlameConfigResource,
        mlflow: MlflowResource,
        storage: StorageResource,
        pipes_subprocess_client: PipesSubprocessClient,
    ) -> MaterializeResult:
        from flame.config import repo_root
        from flame.mlflow.store import connect
        from orchestration.versioning import record_and_tag

        overrides = {"epochs": config.epochs, "seed": config.seed}
        settings = with_overrides(runtime_config(flame_config, mlflow), "train", overrides)
        uri = settings.tracking.tracking_uri
        connect(settings)  # fail before any training starts
        paths = storage.paths(settings)
        inputs = training_inputs(context.instance, settings)
        training_id = training_fingerprint(settings, inputs)
        out = paths.models / training_id
        with exclusive(paths.models / f"{training_id}.lock", f"run {context.run_id}", f"checkpoint folder {out}"):
            data = link_training_set(inputs, paths.training_sets / training_id)
            # Record (dvc add + push) exactly what this training reads; its hashes tag the MLflow run.
            version_tags = record_and_tag(repo_root(), [data.root], push=True)
            context.log.info(f"training {training_id} on {len(inputs)} data shards into {out}; data versions {version_tags}")
            command = _launcher(settings) + [
                "-m", "orchestration.train_step",
                "--config", str(flame_config.params_file()), "--profile", settings.profile,
                "--overrides-json", json.dumps({"train": overrides}),
                "--shards", str(data.shards), "--embeddings", str(data.store), "--out", str(out),
                "--tracking-uri", uri, "--run-name", f"dagster-{context.run_id[:8]}",
                "--tags-json", json.dumps({**version_tags, "dagster.run_id": context.run_id,
                                           "flame.training_id": training_id}),
            ]
            invocation = pipes_subprocess_client.run(context=context, command=command, cwd=str(repo_root()))
        meta = dict(invocation.get_materialize_result().metadata or {})
        raw = {k: getattr(v, "value", v) for k, v in meta.items()}
        if raw.get("mlflow_run_id"):
            base = mlflow_ui(uri, settings.tracking.ui_url)
            meta["mlflow_run"] = mlflow_run_url(base, raw["mlflow_experiment_id"], raw["mlflow_run_id"])
        meta["training_id"] = training_id
        meta["data_shards"] = MetadataValue.json([i.key for i in inputs])
        meta["training_set"] = MetadataValue.path(str(data.root))
        meta["data_versions"] = MetadataValue.json(version_tags)
        meta["checkpoint"] = MetadataValue.path(str(out))
        if (out / checkpoint.LOSS_PLOT_FILE).is_file():
            meta["loss_plot"] = inline_png(out / checkpoint.LOSS_PLOT_FILE, "training loss per epoch")
        return MaterializeResult(metadata=meta)

    return flame_model


def evaluation_asset(config: FlameConfig) -> AssetsDefinition:
    EvaluationRun = evaluation_run_config(config)

    @asset(name="evaluation", group_name=MODEL_GROUP, deps=["flame_model"], kinds={"json"},
           automation_condition=AutomationCondition.eager(), code_version=code_version("evaluations"),
           description="The model this run trained (else the latest) scored on eval.benchmarks "
           "(CLIP_benchmark-style JSON, plots); metrics logged to the training's MLflow run.")
    def evaluation(context: AssetExecutionContext, config: EvaluationRun, flame_config: FlameConfigResource,
                   mlflow: MlflowResource, storage: StorageResource) -> MaterializeResult:
        from evaluations.runner import evaluate_benchmarks
        from flame.mlflow.tracker import MlflowTracker
        from flame.model import load as load_model

        settings = runtime_config(flame_config, mlflow)
        trained = upstream(context, "flame_model")
        trained_dir = Path(trained["checkpoint"])
        out_dir = storage.paths(settings).evaluations / trained_dir.name
        start = time.monotonic()
        result = evaluate_benchmarks(load_model(trained_dir), config.benchmarks, out_dir, settings.eval,
                                     max_pixels=settings.image.max_pixels)
        seconds = time.monotonic() - start
        result_file = out_dir / EVALUATION_FILE
        write_json(result_file, result)
        summary = {k: float(v) for k, v in result["summary"].items() if isinstance(v, (int, float))}
        plots = [out_dir / p for r in result["results"] for p in r.get("plots", []) if (out_dir / p).is_file()]
        if trained.get("mlflow_run_id"):
            with MlflowTracker(settings, run_id=trained["mlflow_run_id"], tracking_uri=settings.tracking.tracking_uri) as tracker:
                tracker.log_evaluation(summary, [result_file, *plots])
        metadata = {
            "checkpoint": MetadataValue.path(str(trained_dir)),
            "training_id": trained.get("training_id", ""),
            "upstream_run_id": trained["upstream_run_id"],
            "result": MetadataValue.path(str(result_file)),
            "metrics": MetadataValue.json(summary),
            "benchmarks": MetadataValue.json([r["dataset"] for r in result["results"]]),
            "seconds": round(seconds, 2),
            "table": MetadataValue.md(md_table([{"metric": k, "value": f"{v:.4f}"} for k, v in summary.items()
                                                if "chance" not in k])),
        }
        for plot in plots:
            metadata[f"plot {plot.stem}"] = inline_png(plot, plot.stem)
        gate = settings.registry.gate_metric
        if gate in summary:
            metadata["gate_metric"] = gate
            metadata["gate_value"] = summary[gate]
        if trained.get("mlflow_run_id"):
            metadata["mlflow_run_id"] = trained["mlflow_run_id"]
        return MaterializeResult(metadata=metadata)

    return evaluation


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


def _number(value) -> float:
    return float("nan") if value is None else float(value)


@asset(group_name=MODEL_GROUP, deps=["evaluation"], kinds={"mlflow"},
       automation_condition=AutomationCondition.eager(),
       code_version=code_version("flame.mlflow", "evaluations.paired", "flame.app.promotion"),
       description="The model logged to MLflow (a self-contained pyfunc) and registered as challenger; "
       "champion when, scored beside the current champion on the same evaluation set, it wins by "
       "registry.margin with a paired-bootstrap lower bound above zero. A training already registered "
       "is not registered again.")
def registered_model(context: AssetExecutionContext, flame_config: FlameConfigResource, mlflow: MlflowResource) -> MaterializeResult:
    from flame.app.promotion import register_and_gate
    from flame.mlflow.gate import registered_version
    from flame.mlflow.pyfunc import log_flame_model

    failed = blocking_check_failures(context, REGISTRATION_GATES)
    if failed:
        raise FlameError(f"registration blocked: check(s) failed: {', '.join(failed)}")
    settings = runtime_config(flame_config, mlflow)
    trained = upstream(context, "flame_model")
    scored = upstream(context, "evaluation")
    if scored.get("checkpoint") != trained.get("checkpoint"):
        raise FlameError(f"the evaluation (run {scored['upstream_run_id']}) is not of the model trained in run "
                         f"{trained['upstream_run_id']}; materialise evaluation first")
    run_id = trained.get("mlflow_run_id")
    uri = settings.tracking.tracking_uri
    training_id = trained.get("training_id")
    existing = registered_version(settings, training_id, tracking_uri=uri) if training_id else None
    model_uri = existing.source if existing else log_flame_model(settings, trained["checkpoint"], run_id=run_id, tracking_uri=uri)
    decision = register_and_gate(settings, model_uri, checkpoint_dir=trained["checkpoint"], run_id=run_id,
                                 tracking_uri=uri, training_id=training_id)
    base = mlflow_ui(uri, settings.tracking.ui_url)
    return MaterializeResult(
        metadata={
            "registered_model": decision.model_name,
            "version": int(decision.version),
            "model_version": model_version_url(base, decision.model_name, decision.version),
            "aliases": MetadataValue.json(decision.aliases),
            "decision": decision.decision,
            "reason": decision.reason,
            "gate_metric": decision.gate_metric,
            "challenger_score": _number(decision.candidate_value),
            "champion_score": _number(decision.champion_value),
            "champion_version": str(decision.champion_version),
            "difference_ci": MetadataValue.json([decision.ci_low, decision.ci_high]),
            "eval_set": decision.eval_set or "",
            "training_id": training_id or "",
            "model_uri": model_uri,
            "checkpoint": MetadataValue.path(str(trained["checkpoint"])),
            "metrics": MetadataValue.json(scored.get("metrics") or {}),
            "mlflow_run_id": run_id or "",
            "upstream_run_id": trained["upstream_run_id"],
        }
    )


def model_assets(config: FlameConfig) -> list[AssetsDefinition]:
    """flame_model -> evaluation -> registered_model, over the whole data set."""
    return [flame_model_asset(config), evaluation_asset(config), registered_model]
