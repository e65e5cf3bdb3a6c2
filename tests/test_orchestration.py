"""Dagster definitions, partitions, schedule and sensor (fast: no download, LLM or training)."""

import json
import subprocess
import sys

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DefaultSensorStatus,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    multiprocess_executor,
)

from flame.config import load_config
from flame.errors import FlameError
from tests.fixtures.orchestration import write_slice

PIPELINE = ["manifest", "image_shards", "caption_embeddings", "flame_model", "evaluation", "registered_model"]


def test_loading_the_definitions_imports_none_of_the_heavy_libraries():
    # Every step's process, the webserver and the daemon load them; the steps import what they run.
    code = ("import sys, orchestration.definitions as d; d.defs(); "
            "print(sorted(m for m in ('torch', 'mlflow', 'img2dataset', 'timm', 'transformers', 'ray') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def test_one_definitions_object_with_the_whole_graph():
    from orchestration.definitions import defs

    defs = defs()
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == set(PIPELINE)
    # The chain, each asset depending on the one before it.
    for parent, child in zip(PIPELINE, PIPELINE[1:]):
        assert AssetKey(parent) in graph.get(AssetKey(child)).parent_keys
    partitioned = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).partitions_def is not None}
    assert partitioned == {"manifest", "image_shards", "caption_embeddings"}
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert {("image_shards", "download_success_rate"), ("caption_embeddings", "embeddings_valid"),
            ("flame_model", "training_loss_decreased"), ("evaluation", "evaluation_above_chance")} <= checks
    blocking = {k.name for k in graph.asset_check_keys if graph.get_check_spec(k).blocking}
    assert {"download_success_rate", "embeddings_valid", "training_loss_decreased", "evaluation_above_chance"} <= blocking
    assert {j.name for j in defs.resolve_all_job_defs()} >= {"ingest_data_shard", "train_evaluate_register",
                                                              "promote", "rollback"}
    assert defs.resolve_schedule_def("retrain").cron_schedule == load_config().orchestration.retrain_cron
    assert defs.resolve_sensor_def("new_manifest").default_status == DefaultSensorStatus.RUNNING
    assert defs.resolve_sensor_def("retrain_on_new_data").default_status == DefaultSensorStatus.RUNNING
    # Declarative automation drives the model assets only; the data assets follow the sensor.
    automated = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition}
    assert automated == {"flame_model", "evaluation", "registered_model"}
    assert graph.get(AssetKey("caption_embeddings")).pools == {"flame-llm"}
    assert graph.get(AssetKey("flame_model")).pools == {"flame-train"}
    retry = graph.get(AssetKey("image_shards")).assets_def.op.retry_policy
    assert retry.max_retries == load_config().orchestration.download_retries
    versions = {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}
    assert all(len(v) == 12 for v in versions.values()), versions
    # The Launchpad's run config, scaffolded with the profile's values.
    profile = load_config()
    defaults = {name: {field: spec.default_value for field, spec in
                       graph.get(AssetKey(name)).assets_def.op.config_schema.config_type.fields.items()}
                for name in ("flame_model", "evaluation")}
    assert defaults == {"flame_model": {"epochs": profile.train.epochs, "seed": profile.train.seed},
                        "evaluation": {"benchmarks": profile.eval.benchmarks}}


def test_data_shards_cut_manifests_into_partition_keys(orchestration_env):
    from flame.data.data_shards import chunk_for_key, discover_chunks

    config = orchestration_env["resources"]["flame_config"].load()
    chunks = discover_chunks(config)
    assert [c.key for c in chunks] == ["slice-00000", "slice-00001"]
    assert [(c.start, c.stop) for c in chunks] == [(0, 16), (16, 32)]
    write_slice(orchestration_env["incoming"] / "new batch.jsonl", 40, 20)
    keys = [c.key for c in discover_chunks(config)]
    assert keys == ["slice-00000", "slice-00001", "new_batch-00000", "new_batch-00001"]
    assert chunk_for_key(config, "new_batch-00001").stop == 20
    with pytest.raises(FlameError, match="no-such-00000"):
        chunk_for_key(config, "no-such-00000")


def test_manifests_with_the_same_name_are_refused(orchestration_env):
    from flame.data.data_shards import discover_chunks

    config = orchestration_env["resources"]["flame_config"].load()
    write_slice(orchestration_env["incoming"] / "slice.jsonl", 40, 4)
    with pytest.raises(FlameError, match="share the name 'slice'"):
        discover_chunks(config)


def test_schedule_tick_without_data_skips_and_says_why(orchestration_env):
    from orchestration.schedules import retrain_schedule

    config = orchestration_env["resources"]["flame_config"].load()
    schedule = retrain_schedule(config)
    assert schedule.cron_schedule == "15 4 * * *"  # the test profile's orchestration.retrain_cron
    resources = {key: orchestration_env["resources"][key] for key in ("flame_config", "storage")}
    with DagsterInstance.get() as instance:  # DAGSTER_HOME in tmp_path: an empty instance
        tick = schedule.evaluate_tick(build_schedule_context(instance=instance, resources=resources))
    assert not tick.run_requests
    assert "cannot train yet: no data shards registered" in tick.skip_message


def test_sensor_registers_configured_shards_then_turns_a_new_manifest_into_ingest_runs(orchestration_env):
    from orchestration.partitions import DATA_SHARDS
    from orchestration.sensors import new_manifest_sensor

    flame_config = orchestration_env["resources"]["flame_config"]
    new_manifest = new_manifest_sensor(flame_config.load())
    resources = {"flame_config": flame_config}
    with DagsterInstance.ephemeral() as instance:
        # A fresh instance: the first tick registers the configured manifest's shards (no runs:
        # the user materialises them); it writes nothing else into the instance.
        first = new_manifest(build_sensor_context(instance=instance, resources=resources))
        assert isinstance(first, SensorResult) and not first.run_requests
        assert list(first.dynamic_partitions_requests[0].partition_keys) == ["slice-00000", "slice-00001"]
        assert instance.event_log_storage.get_concurrency_keys() == set()
        instance.add_dynamic_partitions(DATA_SHARDS.name, ["slice-00000", "slice-00001"])
        empty = new_manifest(build_sensor_context(instance=instance, resources=resources, cursor=first.cursor))
        assert isinstance(empty, SkipReason)

        landed = write_slice(orchestration_env["incoming"] / "batch2.jsonl", 100, 20)
        result = new_manifest(build_sensor_context(instance=instance, resources=resources))
        assert isinstance(result, SensorResult)
        (added,) = result.dynamic_partitions_requests
        assert added.partitions_def_name == DATA_SHARDS.name
        assert list(added.partition_keys) == ["batch2-00000", "batch2-00001"]
        assert [(r.job_name, r.partition_key) for r in result.run_requests] == [
            ("ingest_data_shard", "batch2-00000"), ("ingest_data_shard", "batch2-00001")]
        instance.add_dynamic_partitions(DATA_SHARDS.name, list(added.partition_keys))

        # Same files, cursor carried over: nothing new.
        again = new_manifest(build_sensor_context(instance=instance, cursor=result.cursor, resources=resources))
        assert isinstance(again, SkipReason)

        # The manifest changes: its shards are re-ingested under new run keys, no new partitions.
        landed.write_text(landed.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
        changed = new_manifest(build_sensor_context(instance=instance, cursor=result.cursor, resources=resources))
        assert not changed.dynamic_partitions_requests or not list(changed.dynamic_partitions_requests[0].partition_keys)
        assert [r.partition_key for r in changed.run_requests] == ["batch2-00000"]
        assert changed.run_requests[0].run_key != result.run_requests[0].run_key
        assert json.loads(changed.cursor) != json.loads(result.cursor)


def test_executor_is_configuration(orchestration_env):
    from orchestration.executors import executor_from_config

    config = orchestration_env["resources"]["flame_config"].load()
    config.orchestration.executor = "multiprocess"
    config.orchestration.executor_config = {"max_concurrent": 2}
    executor = executor_from_config(config)
    assert executor.name == multiprocess_executor.name
    config.orchestration.executor = "dagster:multiprocess_executor"
    config.orchestration.executor_config = {}
    assert executor_from_config(config) is multiprocess_executor
    config.orchestration.executor = "dagster_k8s_not_installed:k8s_job_executor"
    with pytest.raises(FlameError, match="dagster_k8s_not_installed:k8s_job_executor"):
        executor_from_config(config)
    config.orchestration.executor = "kubernetes"
    with pytest.raises(FlameError, match="orchestration.executor='kubernetes'"):
        executor_from_config(config)


def test_training_launcher_is_configuration(orchestration_env):
    import sys

    from orchestration.train_launch import command

    config = orchestration_env["resources"]["flame_config"].load()
    assert command(config, []) == [sys.executable, "-m", "orchestration.train_step"]
    config.orchestration.train_launcher = ["torchrun", "--nnodes=2", "--nproc_per_node=8"]
    launcher = command(config, [])
    assert launcher[0].endswith("torchrun") and launcher[1:] == ["--nnodes=2", "--nproc_per_node=8", "-m",
                                                                  "orchestration.train_step"]


def test_relative_mlflow_store_is_the_repo_root(tmp_path, monkeypatch):
    from flame.config import repo_root
    from orchestration.resources import FlameConfigResource, MlflowResource, StorageResource

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FLAME_STORAGE_ROOT", raising=False)
    config = FlameConfigResource(params_path=str(repo_root() / "params.yaml"), profile="tiny").load()
    assert MlflowResource().uri(config) == f"sqlite:///{repo_root() / 'mlflow.db'}"
    assert StorageResource().paths(config).root == repo_root() / "data"
    # A resource value or environment variable is typed in a shell: the current folder.
    assert MlflowResource(tracking_uri="sqlite:///here.db").uri(config) == f"sqlite:///{tmp_path / 'here.db'}"
    assert MlflowResource(tracking_uri="http://127.0.0.1:5000").uri(config) == "http://127.0.0.1:5000"
    monkeypatch.setenv("FLAME_STORAGE_ROOT", "store")
    assert StorageResource().paths(config).root == tmp_path / "store"


def test_pool_limits_are_the_instances_and_an_operators_limit_stands(orchestration_env, tmp_path):
    """The project's dagster.yaml gives every pool one slot; a limit set on the instance (as an
    operator does in the UI) is kept: nothing in the definitions rewrites it."""
    import shutil

    from dagster import DagsterInstance

    from orchestration.pools import LLM_POOL, TRAIN_POOL
    from tests.fixtures.orchestration import INSTANCE_CONFIG

    shutil.copyfile(INSTANCE_CONFIG, tmp_path / "dagster.yaml")
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.global_op_concurrency_default_limit == 1  # flame-llm and flame-train: one slot each
        storage = instance.event_log_storage
        storage.set_concurrency_slots(TRAIN_POOL, 3)  # the operator's choice
        from orchestration.definitions import build_definitions, definition_config

        build_definitions(definition_config())  # building the definitions touches no pool
        assert storage.get_concurrency_info(TRAIN_POOL).slot_count == 3
        assert LLM_POOL not in storage.get_concurrency_keys()


def test_evaluation_chance_pairs():
    from orchestration.checks import chance_pairs

    metrics = {"b/mean_recall@5": 0.3, "b/chance_mean_recall@5": 0.05, "b/other": 1.0}
    assert chance_pairs(metrics) == {"b/mean_recall@5": (0.3, 0.05)}


def test_a_checkpoint_folder_has_one_writer_at_a_time(tmp_path):
    from orchestration.folder_lock import exclusive

    lock = tmp_path / "models" / "abc.lock"
    with exclusive(lock, "run first", "checkpoint folder abc"):
        with pytest.raises(FlameError, match="checkpoint folder abc is in use by run first"):
            with exclusive(lock, "run second", "checkpoint folder abc"):
                pass
    with exclusive(lock, "run second", "checkpoint folder abc"):  # free again once the first is done
        assert lock.read_text(encoding="utf-8") == "run second"
