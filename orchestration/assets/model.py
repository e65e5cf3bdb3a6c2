"""Model assets over the registered data shards: train (through Dagster Pipes: a subprocess,
plain Python or torchrun, or Ray Train, beside the step or as a Ray job; see
``orchestration.train_launch``), evaluate on the configured benchmarks, then log, register and
gate in MLflow. Each calls its step in ``flame.app.pipeline``; around it, this module records the
data versions with DVC (``orchestration.versioning``) and what the Dagster UI shows.

Built from the configuration (``model_assets``): the Launchpad's run config defaults to the
profile's values, and the op tags of training come from ``orchestration.train_op_tags``.
Each asset is automated: it materialises once its inputs are newer than it, none is missing,
and the blocking checks of the assets it reads passed.
"""

import json

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

from flame.config import FlameConfig
from flame.errors import FlameError
from orchestration.code_versions import code_version
from orchestration.folder_lock import exclusive
from orchestration.lineage import upstream
from orchestration.metadata import inline_png, md_table, mlflow_run_url, mlflow_ui, model_version_url
from orchestration.partitions import DATA_SHARDS
from orchestration.pools import TRAIN_POOL
from orchestration.resources import FlameConfigResource, MlflowResource, StorageResource, runtime_config
from orchestration.train_launch import TAG_CLUSTER, TAG_JOB, TAG_WORLD_SIZE, launch
from orchestration.versioning import DATA_STAGES, MODEL_STAGES, record_and_tag, record_training_set

MODEL_GROUP = "model"
# Eager, and never past a failed blocking check of an asset it reads (Dagster's own gate).
AUTOMATION = AutomationCondition.eager() & AutomationCondition.all_deps_blocking_checks_passed()
DATA_PATHS = ("data/shards", "data/embeddings")
TRAINING_SET_PATHS = DATA_PATHS + ("data/training_sets",)


def training_run_config(config: FlameConfig) -> type[Config]:
    """The Launchpad's config of a training, its defaults the profile's."""

    class TrainingRun(Config):
        epochs: int = Field(config.train.epochs, ge=1, description="train.epochs for this run (a training of the "
                            "same data and settings continues to it)")
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
           automation_condition=AUTOMATION,
           code_version=code_version("flame.train", "flame.model", "flame.text_modes", "flame.data.plan",
                                     "orchestration.train_step", "orchestration.ray_train"),
           description="The FLAME model trained on exactly the registered data shards, through Dagster Pipes: "
           "a subprocess (plain Python, or torchrun per orchestration.train_launcher) or Ray Train workers "
           "(orchestration.ray_train), beside the step or as a Ray job (orchestration.train_pipes).")
    def flame_model(
        context: AssetExecutionContext,
        config: TrainingRun,
        flame_config: FlameConfigResource,
        mlflow: MlflowResource,
        storage: StorageResource,
        pipes_subprocess_client: PipesSubprocessClient,
    ) -> MaterializeResult:
        from flame import checkpoint
        from flame.app import pipeline
        from flame.mlflow.store import connect

        overrides = {"epochs": config.epochs, "seed": config.seed}
        settings = with_overrides(runtime_config(flame_config, mlflow), "train", overrides)
        uri = settings.tracking.tracking_uri
        if settings.tracking.enabled:
            connect(settings)  # fail before anything trains
        paths = storage.paths(settings)
        params = flame_config.params_file()
        inputs = pipeline.training_inputs(settings, paths, context.instance.get_dynamic_partitions(DATA_SHARDS.name))
        training_id = inputs.identity.id
        out = paths.model(training_id)
        with exclusive(paths.models / f"{training_id}.lock", f"run {context.run_id}", f"checkpoint folder {out}",
                       is_stale=lambda holder: run_has_ended(context.instance, holder)):
            training_set = pipeline.assemble_training_set(inputs, paths)
            if paths.remote:
                versions = record_training_set(params.parent, str(training_set.root), training_id)
            else:
                versions = record_and_tag(params.parent, settings, params, paths.root, DATA_STAGES, DATA_PATHS)
            context.log.info(f"training {training_id} on {len(inputs.shards)} data shards into {out}; data {versions}")
            arguments = [
                "--config", str(params), "--profile", settings.profile,
                "--overrides-json", json.dumps({"train": overrides}), "--training-set", str(training_set.root),
                "--training-id", training_id, "--out", str(out), "--tracking-uri", uri,
                "--run-name", f"dagster-{context.run_id[:8]}",
            ]
            invocation, launched = launch(context, settings, arguments, {**versions, "dagster.run_id": context.run_id},
                                          pipes_subprocess_client)
        meta = {**dict(invocation.get_materialize_result().metadata or {}), **launched}
        raw = {k: getattr(v, "value", v) for k, v in meta.items()}
        if raw.get("mlflow_run_id"):
            meta["mlflow_run"] = mlflow_run_url(mlflow_ui(uri, settings.tracking.ui_url), raw["mlflow_experiment_id"],
                                                raw["mlflow_run_id"])
        meta["training_id"] = training_id
        meta["data_shards"] = MetadataValue.json(inputs.keys)
        meta["training_set"] = MetadataValue.path(str(training_set.root))
        meta["data_versions"] = MetadataValue.json(versions)
        meta["checkpoint"] = MetadataValue.path(str(out))
        if (out / checkpoint.LOSS_PLOT_FILE).exists():
            meta["loss_plot"] = inline_png(out / checkpoint.LOSS_PLOT_FILE, "training loss per epoch")
        return MaterializeResult(metadata=meta)

    return flame_model


def evaluation_asset(config: FlameConfig) -> AssetsDefinition:
    EvaluationRun = evaluation_run_config(config)

    @asset(name="evaluation", group_name=MODEL_GROUP, deps=["flame_model"], kinds={"json"},
           automation_condition=AUTOMATION, code_version=code_version("evaluations"),
           description="The model this run trained (else the latest) scored on eval.benchmarks "
           "(CLIP_benchmark-style JSON, plots); metrics logged to the training's MLflow run.")
    def evaluation(context: AssetExecutionContext, config: EvaluationRun, flame_config: FlameConfigResource,
                   mlflow: MlflowResource, storage: StorageResource) -> MaterializeResult:
        from flame.app import pipeline

        settings = with_overrides(runtime_config(flame_config, mlflow), "eval", {"benchmarks": config.benchmarks})
        trained = upstream(context, "flame_model")
        result = pipeline.evaluate(settings, trained["checkpoint"], storage.paths(settings).evaluation(trained["training_id"]),
                                   run_id=trained.get("mlflow_run_id"))
        summary = {k: float(v) for k, v in result["summary"].items() if isinstance(v, (int, float))}
        metadata = {
            "checkpoint": MetadataValue.path(str(trained["checkpoint"])),
            "training_id": trained["training_id"],
            "upstream_run_id": trained["upstream_run_id"],
            "result": MetadataValue.path(str(result["result_file"])),
            "metrics": MetadataValue.json(summary),
            "benchmarks": MetadataValue.json([r["dataset"] for r in result["results"]]),
            "seconds": result["seconds"],
            "table": MetadataValue.md(md_table([{"metric": k, "value": f"{v:.4f}"} for k, v in summary.items()
                                                if "chance" not in k])),
            **{f"plot {plot.stem}": inline_png(plot, plot.stem) for plot in result["plot_files"]},
        }
        gate = settings.registry.gate_metric
        if gate in summary:
            metadata.update(gate_metric=gate, gate_value=summary[gate])
        if trained.get("mlflow_run_id"):
            metadata["mlflow_run_id"] = trained["mlflow_run_id"]
        return MaterializeResult(metadata=metadata)

    return evaluation


def run_has_ended(instance, holder: str) -> bool:
    """Whether the lock ``holder`` ("run <id>") is a Dagster run of ``instance`` that has ended."""
    run_id = holder.removeprefix("run ").strip()
    run = instance.get_run_by_id(run_id) if run_id else None
    return run is not None and run.is_finished


def where_trained(trained: dict) -> dict[str, str]:
    """Tags for the model version naming where its training ran: its world size and, on Ray,
    the cluster and the job."""
    keys = {"world_size": TAG_WORLD_SIZE, "ray_cluster": TAG_CLUSTER, "ray_job": TAG_JOB}
    return {tag: str(trained[key]) for key, tag in keys.items() if trained.get(key) not in (None, "")}


def _number(value) -> float:
    return float("nan") if value is None else float(value)


@asset(group_name=MODEL_GROUP, deps=["evaluation"], kinds={"mlflow"}, automation_condition=AUTOMATION,
       code_version=code_version("flame.mlflow", "evaluations", "flame.app.promotion"),
       description="The model logged to MLflow (a self-contained pyfunc) and registered as challenger, with its "
       "git commit and the DVC hashes of its data; champion when, scored beside the current champion on the same "
       "evaluation set, it wins by registry.margin with a paired-bootstrap lower bound above zero. A training "
       "already registered at the same step is not registered again.")
def registered_model(context: AssetExecutionContext, flame_config: FlameConfigResource, mlflow: MlflowResource,
                     storage: StorageResource) -> MaterializeResult:
    from flame.app import pipeline

    settings = runtime_config(flame_config, mlflow)
    trained = upstream(context, "flame_model")
    scored = upstream(context, "evaluation")
    if scored.get("checkpoint") != trained.get("checkpoint"):
        raise FlameError(f"the evaluation (run {scored['upstream_run_id']}) is not of the model trained in run "
                         f"{trained['upstream_run_id']}; materialise evaluation first")
    params = flame_config.params_file()
    paths = storage.paths(settings)
    if paths.remote:  # versioned with the training set it read (record_training_set)
        lineage = dict(trained.get("data_versions") or {})
    else:
        lineage = record_and_tag(params.parent, settings, params, paths.root, MODEL_STAGES, TRAINING_SET_PATHS)
    run_id = trained.get("mlflow_run_id")
    decision = pipeline.register(settings, trained["checkpoint"], training_id=trained["training_id"], run_id=run_id,
                                 lineage={**lineage, **where_trained(trained)})
    base = mlflow_ui(settings.tracking.tracking_uri, settings.tracking.ui_url)
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
            "training_id": trained["training_id"],
            "trained_epochs": int(trained.get("epochs") or 0),
            "data_versions": MetadataValue.json(lineage),
            "checkpoint": MetadataValue.path(str(trained["checkpoint"])),
            "metrics": MetadataValue.json(scored.get("metrics") or {}),
            "mlflow_run_id": run_id or "",
            "upstream_run_id": trained["upstream_run_id"],
        }
    )


def model_assets(config: FlameConfig) -> list[AssetsDefinition]:
    """flame_model -> evaluation -> registered_model, over the whole data set."""
    return [flame_model_asset(config), evaluation_asset(config), registered_model]
