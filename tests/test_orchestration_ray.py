"""The pipeline with Dagster's steps on the Ray cluster: ``orchestration.executor: ray`` makes
every step a Ray job (dagster-ray's executor), and the training step launches Ray Train workers
as a Ray job of their own through Dagster Pipes (``train_pipes: ray_job``).

Each data shard's ingest and then the model are materialised (the runs "Materialize all"
makes), with the instance in PostgreSQL (deploy/dagster.yaml), the storage root in the bucket
and MLflow on the services' server, all on the two-node cluster of ``scripts/services.sh``.
Every step ran in its own Ray job, in a process of the cluster, not in this one (the runs'
orchestrator); the training's metrics reached the run's log through Pipes; the registered
version names the Ray job and the world size of its training."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from flame.config import load_config
from tests.fixtures.clone import REPO
from tests.fixtures.orchestration import TEST_PROFILE, write_params, write_slice
from tests.fixtures.services import dagster_yaml, database_name

WORKERS = 2


def test_ray_train_and_a_train_launcher_are_one_choice():
    from flame.config import ConfigError

    with pytest.raises(ConfigError, match=r"orchestration\.train_launcher=\['torchrun'\].*ray_train\.workers=2"):
        load_config(overrides={"orchestration": {"train_launcher": ["torchrun"], "ray_train": {"workers": 2}}})


def test_the_training_command_follows_the_launcher_and_where_it_runs():
    from orchestration.train_launch import CLUSTER_PYTHON, command

    def launched(orchestration: dict, on_cluster: bool) -> list[str]:
        return command(load_config(overrides={"orchestration": orchestration}), ["--out", "x"], on_cluster)

    assert launched({}, False)[1:] == ["-m", "orchestration.train_step", "--out", "x"]
    assert launched({"train_launcher": ["torchrun", "--nproc_per_node=2"]}, True)[1:] == [
        "--nproc_per_node=2", "-m", "orchestration.train_step", "--out", "x"]
    assert launched({"ray_train": {"workers": 2}}, True) == [CLUSTER_PYTHON, "-m", "orchestration.ray_train", "--out", "x"]


def _ray_jobs(jobs_url: str) -> list[dict]:
    with urllib.request.urlopen(f"{jobs_url}/api/jobs/", timeout=10) as response:
        return json.load(response)


def _ended_jobs(jobs_url: str, submission_ids: set[str], timeout: float = 120) -> dict[str, dict]:
    """The Ray jobs ``submission_ids`` once each has ended (a step's process may outlive its last event)."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j["submission_id"]: j for j in _ray_jobs(jobs_url) if j.get("submission_id") in submission_ids}
        running = [i for i in submission_ids if jobs.get(i, {}).get("status") not in ("SUCCEEDED", "FAILED", "STOPPED")]
        if not running:
            return jobs
        assert time.monotonic() < deadline, f"Ray jobs still running: {running}"
        time.sleep(1)


def _job_log(jobs_url: str, submission_id: str) -> str:
    with urllib.request.urlopen(f"{jobs_url}/api/jobs/{submission_id}/logs", timeout=10) as response:
        return json.load(response)["logs"]


@pytest.fixture
def on_the_cluster(services, ray_cluster, tmp_path, monkeypatch):
    """params.yaml of a small pipeline (32 images in two data shards) run by the ray executor,
    training with Ray Train through a Ray job; the storage root in a fresh prefix of the bucket,
    MLflow on the services' server, a Dagster home whose instance is a fresh PostgreSQL database."""
    prefix = services.unique_prefix("orch-ray")
    tag = prefix.rsplit("-", 1)[1]
    manifest = write_slice(tmp_path / "manifests" / "slice.jsonl", 0, 32, split="dev")
    (tmp_path / "incoming").mkdir()
    params = write_params(tmp_path / "params.yaml", [manifest], tmp_path / "incoming", f"{prefix}/data",
                          services.mlflow_url, extra={
                              "orchestration": {"executor": "ray", "cluster_address": ray_cluster.jobs_url,
                                                "train_pipes": "ray_job", "download_retries": 0,
                                                "ray_train": {"workers": WORKERS, "placement_strategy": "SPREAD"}},
                              "tracking": {"experiment": f"orch-ray-{tag}"},
                              "registry": {"model_name": f"flame-orch-ray-{tag}"}})
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(dagster_yaml(services, database_name(services.new_database("dagster_ray"))),
                                       encoding="utf-8")
    env = {**services.env(), "DAGSTER_HOME": str(home), "FLAME_CONFIG": str(params), "FLAME_PROFILE": TEST_PROFILE}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FLAME_STORAGE_ROOT", raising=False)
    return {"params": params, "tmp": tmp_path}


@pytest.mark.slow
@pytest.mark.services
def test_materialize_all_runs_every_step_as_a_ray_job_and_trains_with_ray_train(on_the_cluster, services,
                                                                                ray_cluster):
    from dagster import AssetKey, DagsterEventType, DagsterInstance, execute_job
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from mlflow import MlflowClient

    from flame.data.data_shards import discover_chunks
    from orchestration.partitions import DATA_SHARDS

    config = load_config(on_the_cluster["params"], TEST_PROFILE)
    repository = ReconstructableRepository.for_module("orchestration.definitions", "defs", working_directory=str(REPO))
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        keys = [c.key for c in discover_chunks(config)]
        assert keys == ["slice-00000", "slice-00001"]
        instance.add_dynamic_partitions(DATA_SHARDS.name, keys)

        def run(what: str, job_name: str, tags: dict) -> tuple[str, tuple[str, dict[str, int]]]:
            """One run to its end: its id and the process each of its steps started in."""
            with execute_job(repository.get_reconstructable_job(job_name), instance, tags=tags) as result:
                failures = [f"{e.step_key}: {e.event_specific_data.error.message}" for e in result.all_events
                            if e.event_type == DagsterEventType.STEP_FAILURE]
                assert result.success, (what, failures)
                return what, (result.run_id, {e.step_key: e.pid for e in result.all_events
                                              if e.event_type == DagsterEventType.STEP_START})

        # As "Materialize all" does: the data shards side by side, then the model over all of them.
        with ThreadPoolExecutor(len(keys)) as pool:
            results = dict(pool.map(lambda key: run(f"ingest {key}", "ingest_data_shard", {"dagster/partition": key}),
                                    keys))
        results.update([run("train", "train_evaluate_register", {})])
        trained = instance.get_latest_materialization_event(AssetKey("flame_model")).asset_materialization
        trained = {k: v.value for k, v in trained.metadata.items()}
        step_logs = [r.user_message for r in instance.all_logs(results["train"][0]) if "train/loss=" in r.user_message]

    # Every step of every run: a Ray job of its own that succeeded, its process one of the cluster's.
    jobs = _ray_jobs(ray_cluster.jobs_url)
    for what, (run_id, step_pids) in results.items():
        of_run = {j["metadata"]["dagster/op"]: j["submission_id"] for j in jobs
                  if (j.get("metadata") or {}).get("dagster/run-id") == run_id and "dagster/op" in j["metadata"]}
        assert sorted(of_run) == sorted(step_pids), what
        ended = _ended_jobs(ray_cluster.jobs_url, set(of_run.values()))
        for step, submission_id in of_run.items():
            job = ended[submission_id]
            assert job["status"] == "SUCCEEDED", (what, step, job["message"])
            pid = step_pids[step]
            assert pid != os.getpid()
            assert f" - {pid} - {step} - STEP_START - " in _job_log(ray_cluster.jobs_url, job["submission_id"]), \
                (what, step, "the Ray job's log shows the step starting in the process Dagster recorded")
    steps = set().union(*(pids for _, pids in results.values()))
    assert {"manifest", "image_shards", "caption_embeddings", "flame_model", "evaluation", "registered_model"} <= steps

    # The training: Ray Train workers, in a Ray job of their own launched through Pipes.
    training_job = next(j for j in jobs if j["submission_id"] == trained["ray_job"])
    assert training_job["status"] == "SUCCEEDED" and "-m orchestration.ray_train" in training_job["entrypoint"]
    assert training_job["metadata"]["dagster/run-id"] == results["train"][0]
    assert trained["world_size"] == WORKERS and len(trained["ray_workers"]) == WORKERS
    assert len({w["node_id"] for w in trained["ray_workers"]}) == WORKERS
    assert not {w["pid"] for w in trained["ray_workers"]} & ({os.getpid()} | set(results["train"][1].values()))
    assert len(step_logs) >= trained["steps"], "each logged step's metrics reached the run's log through Pipes"

    # The registered version records the cluster run.
    client = MlflowClient(tracking_uri=services.mlflow_url, registry_uri=services.mlflow_url)
    (version,) = client.search_model_versions(f"name='{config.registry.model_name}'")
    assert version.tags["train.world_size"] == str(WORKERS)
    assert version.tags["train.ray_job"] == trained["ray_job"]
    assert version.tags["train.ray_cluster"] == trained["ray_cluster"]
    run_tags = client.get_run(version.run_id).data.tags
    assert run_tags["train.launcher"] == "ray_train" and run_tags["train.ray_job"] == trained["ray_job"]
