"""The whole chain on the two-node Ray cluster of ``scripts/services.sh``, orchestrated by
Dagster, with the storage root in the S3 bucket: every step a Ray job (``orchestration.executor:
ray``, dagster-ray's executor); each data shard downloaded by img2dataset's ray distributor and
its captions embedded by a Ray worker (``text.distributor: ray``); the model trained by two Ray
Train workers in a Ray job of its own, launched through Dagster Pipes (``train_pipes:
ray_job``); then evaluated and registered.

The runs are those "Materialize all" makes: the three data shards side by side, then the
model. The instance is in PostgreSQL (deploy/dagster.yaml) and MLflow on the services' server.
What comes out is checked against one process doing the same work: the embedding store against
a one-process embedding of the same shards (max abs difference <= 1e-6), and the trained weights
against one process training on the same global batches (<= 1e-5). For that the three shards
hold 8, 16 and 8 images: the two ranks read shards {0, 2} and {1}, 16 images each, and every
step's global batch is the whole training set, as it is for the one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from safetensors.torch import load_file

from flame.checkpoint import WEIGHTS_FILE
from flame.config import load_config
from flame.locations import fetch, fetch_tree, location
from flame.text.embed import embed_shards
from flame.text.embed_shard import InputShard
from flame.text.store import EmbeddingStore
from tests.fixtures.clone import REPO
from tests.fixtures.orchestration import TEST_PROFILE, write_params, write_slice
from tests.fixtures.services import dagster_yaml, database_name
from tests.fixtures.text import assert_same_store

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


# The three data shards' manifests: 8, 16 and 8 sample images (rows of the sample's dev split:
# the evaluation's gate is only reliably passed by so small a training on images it has seen).
MANIFESTS = {"a": (0, 8), "b": (8, 16), "c": (24, 8)}
EPOCHS = 30  # one step each: the global batch of 32 is the whole training set
# fp32, unclipped, AdamW's eps at 1e-3, as in tests/test_train_ddp.py: a different order of the
# same sums cannot flip a step, so two ranks and one process must reach the same weights.
TRAIN = {"epochs": EPOCHS, "batch_size": 32, "warmup_steps": 2, "log_every_steps": 1, "workers": 0,
         "precision": "fp32", "eps": 1e-3, "grad_clip": None, "device": "cpu"}


@pytest.fixture
def on_the_cluster(services, ray_cluster, tmp_path, monkeypatch):
    """params.yaml of the chain on the cluster; the storage root in a fresh prefix of the bucket,
    MLflow on the services' server, a Dagster home whose instance is a fresh PostgreSQL database."""
    prefix = services.unique_prefix("orch-ray")
    tag = prefix.rsplit("-", 1)[1]
    manifests = [write_slice(tmp_path / "manifests" / f"{name}.jsonl", start, count, split="dev")
                 for name, (start, count) in MANIFESTS.items()]
    (tmp_path / "incoming").mkdir()
    params = write_params(tmp_path / "params.yaml", manifests, tmp_path / "incoming", f"{prefix}/data",
                          services.mlflow_url, extra={
                              # No cluster address for the data and text steps: they run in Ray jobs,
                              # whose $RAY_ADDRESS names the cluster.
                              "data": {"distributor": "ray"},
                              "text": {"distributor": "ray", "workers": 2},
                              "train": TRAIN,
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
    return {"params": params, "tmp": tmp_path, "prefix": prefix}


def _one_process_store(config, shards: dict[str, str], encoder, out) -> EmbeddingStore:
    """The data shards (key -> URL) embedded in this process, by one encoder."""
    made = embed_shards(config.text, [InputShard(key, url) for key, url in sorted(shards.items())], out,
                        encoder=encoder, progress=False)
    return EmbeddingStore.open(made["store"])


def _one_process_training(setup: dict, training_set: str, training_id: str) -> str:
    """The same training in one process (orchestration.train_step, no Ray, no tracking): its
    checkpoint folder in the bucket."""
    out = f"{setup['prefix']}/one-process"
    cmd = [sys.executable, "-m", "orchestration.train_step", "--config", str(setup["params"]), "--profile",
           TEST_PROFILE, "--overrides-json", json.dumps({"tracking": {"enabled": False}}),
           "--training-set", training_set, "--training-id", training_id, "--out", out]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _weights(checkpoint: str) -> dict:
    return load_file(fetch(location(checkpoint) / WEIGHTS_FILE))


@pytest.mark.slow
@pytest.mark.services
def test_the_chain_on_the_cluster_matches_one_process_and_registers_the_cluster_run(on_the_cluster, services,
                                                                                     ray_cluster, tiny_encoder):
    from dagster import DagsterEventType, DagsterInstance, execute_job
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from mlflow import MlflowClient

    from flame.data.data_shards import discover_chunks
    from orchestration.partitions import DATA_SHARDS

    config = load_config(on_the_cluster["params"], TEST_PROFILE)
    repository = ReconstructableRepository.for_module("orchestration.definitions", "defs", working_directory=str(REPO))
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        keys = [c.key for c in discover_chunks(config)]
        assert keys == ["a-00000", "b-00000", "c-00000"]
        instance.add_dynamic_partitions(DATA_SHARDS.name, keys)

        def run(what: str, job_name: str, tags: dict) -> tuple[str, dict]:
            """One run to its end: its id, the process each of its steps started in, and the
            metadata of what it materialised."""
            with execute_job(repository.get_reconstructable_job(job_name), instance, tags=tags) as result:
                failures = [f"{e.step_key}: {e.event_specific_data.error.message}" for e in result.all_events
                            if e.event_type == DagsterEventType.STEP_FAILURE]
                assert result.success, (what, failures)
                made = {e.asset_key.to_user_string(): {k: v.value for k, v in
                                                       e.step_materialization_data.materialization.metadata.items()}
                        for e in result.get_asset_materialization_events()}
                return what, {"run_id": result.run_id, "made": made,
                              "pids": {e.step_key: e.pid for e in result.all_events
                                       if e.event_type == DagsterEventType.STEP_START}}

        # As "Materialize all" does: the data shards side by side, then the model over all of them.
        with ThreadPoolExecutor(len(keys)) as pool:
            results = dict(pool.map(lambda key: run(key, "ingest_data_shard", {"dagster/partition": key}), keys))
        results.update([run("train", "train_evaluate_register", {})])
        step_logs = [r.user_message for r in instance.all_logs(results["train"]["run_id"])
                     if "train/loss=" in r.user_message]
    step_pids = set().union(*(r["pids"].values() for r in results.values()))

    # Every step of every run: a Ray job of its own that succeeded, its process one of the cluster's.
    jobs = _ray_jobs(ray_cluster.jobs_url)
    for what, result in results.items():
        of_run = {j["metadata"]["dagster/op"]: j["submission_id"] for j in jobs
                  if (j.get("metadata") or {}).get("dagster/run-id") == result["run_id"] and "dagster/op" in j["metadata"]}
        assert sorted(of_run) == sorted(result["pids"]), what
        ended = _ended_jobs(ray_cluster.jobs_url, set(of_run.values()))
        for step, submission_id in of_run.items():
            job = ended[submission_id]
            assert job["status"] == "SUCCEEDED", (what, step, job["message"])
            pid = result["pids"][step]
            assert pid != os.getpid()
            assert f" - {pid} - {step} - STEP_START - " in _job_log(ray_cluster.jobs_url, job["submission_id"]), \
                (what, step, "the Ray job's log shows the step starting in the process Dagster recorded")
    steps = set().union(*(r["pids"] for r in results.values()))
    assert {"manifest", "image_shards", "caption_embeddings", "flame_model", "evaluation", "registered_model"} <= steps

    # Download: each data shard by img2dataset's ray distributor, into the bucket.
    shards = {key: results[key]["made"]["image_shards"] for key in keys}
    assert {key: (m["distributor"], m["success"]) for key, m in shards.items()} == {
        "a-00000": ("ray", 8), "b-00000": ("ray", 16), "c-00000": ("ray", 8)}
    assert all(m["shard"].startswith("s3://") for m in shards.values())

    # Embedding: in Ray workers, not in the steps' processes; the store in the bucket equals
    # a one-process embedding of the same shards.
    embedded = {key: results[key]["made"]["caption_embeddings"] for key in keys}
    workers = {key: m["workers"][key] for key, m in embedded.items()}
    assert not {int(w.rsplit("/", 1)[1]) for w in workers.values()} & (step_pids | {os.getpid()}), workers
    alive = {node["raylet"]["nodeId"] for node in ray_cluster.alive_nodes()}
    assert {w.rsplit("/", 1)[0] for w in workers.values()} <= alive, workers
    (store_url,) = {m["store"] for m in embedded.values()}
    made_store = EmbeddingStore.open(fetch_tree(location(store_url)))
    reference = _one_process_store(load_config(on_the_cluster["params"], TEST_PROFILE,
                                               overrides={"text": {"distributor": "local"}}),
                                   {key: m["shard"] for key, m in shards.items()}, tiny_encoder,
                                   on_the_cluster["tmp"] / "one_process_store")
    assert_same_store(made_store, reference)

    # Training: Ray Train workers in a Ray job of their own, launched through Pipes; the same
    # weights as one process training on the same global batches.
    trained = results["train"]["made"]["flame_model"]
    training_job = next(j for j in jobs if j["submission_id"] == trained["ray_job"])
    assert training_job["status"] == "SUCCEEDED" and "-m orchestration.ray_train" in training_job["entrypoint"]
    assert training_job["metadata"]["dagster/run-id"] == results["train"]["run_id"]
    assert trained["world_size"] == WORKERS and len(trained["ray_workers"]) == WORKERS
    assert len({w["node_id"] for w in trained["ray_workers"]}) == WORKERS
    assert not {w["pid"] for w in trained["ray_workers"]} & (step_pids | {os.getpid()})
    assert trained["steps"] == EPOCHS
    assert len(step_logs) >= trained["steps"], "each logged step's metrics reached the run's log through Pipes"
    assert trained["checkpoint"].startswith("s3://") and trained["training_set"].startswith("s3://")
    one = _one_process_training(on_the_cluster, trained["training_set"], trained["training_id"])
    cluster_weights, one_weights = _weights(trained["checkpoint"]), _weights(one)
    assert cluster_weights.keys() == one_weights.keys()
    assert max(float((cluster_weights[k] - one_weights[k]).abs().max()) for k in one_weights) <= 1e-5

    # Evaluated, then registered: the version records the cluster run.
    assert "evaluation" in results["train"]["made"] and "registered_model" in results["train"]["made"]
    client = MlflowClient(tracking_uri=services.mlflow_url, registry_uri=services.mlflow_url)
    (version,) = client.search_model_versions(f"name='{config.registry.model_name}'")
    assert version.tags["train.world_size"] == str(WORKERS)
    assert version.tags["train.ray_job"] == trained["ray_job"]
    assert version.tags["train.ray_cluster"] == trained["ray_cluster"]
    run_tags = client.get_run(version.run_id).data.tags
    assert run_tags["train.launcher"] == "ray_train" and run_tags["train.ray_job"] == trained["ray_job"]
