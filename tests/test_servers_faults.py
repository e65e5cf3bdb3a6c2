"""Faults of the servers (``scripts/services.sh``), as they happen in a deployment:

- the MLflow server dies during a training and comes back: the training's run is complete;
- the MLflow server is down when a model is registered: the step fails with a clear error, no
  version is left half-registered, and the retry registers exactly one;
- PostgreSQL restarts between two runs: the next Dagster run and MLflow run succeed.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flame.config import load_config, repo_root
from flame.errors import FlameError
from tests.fixtures.services import dagster_yaml, database_name
from tests.fixtures.tracking import free_port, start_server, stop_server

pytestmark = [pytest.mark.slow, pytest.mark.services]

STEPS = 24  # 6 epochs of 4 steps on the sample shards


@pytest.fixture
def own_mlflow_server(services, tmp_path):
    """An MLflow server of this test alone (its own database in the services' PostgreSQL, its
    artifacts in a fresh prefix of the bucket), which the test may kill and start again."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", services.new_database("mlflow_fault"),
           "--artifacts-destination", f"{services.unique_prefix('fault')}/mlflow"]
    server = {"url": url, "log": tmp_path / "mlflow.log"}

    def start():
        server["proc"] = start_server(cmd, f"{url}/health", tmp_path / "mlflow.log", timeout=180, env=services.aws_env)

    server["start"] = start
    start()
    yield server
    stop_server(server["proc"])


@pytest.fixture
def params_file(tmp_path, own_mlflow_server) -> Path:
    """The project's params.yaml plus a 'unit' profile (a 2-block ViT at 32 px) tracked on the
    test's server, one log line per step."""
    params = yaml.safe_load((repo_root() / "params.yaml").read_text())
    params["profiles"]["unit"] = {
        "extends": "tiny",
        "image": {"img_size": 32, "patch_size": 8, "model_kwargs": {"depth": 2}},
        "train": {"epochs": STEPS // 4, "batch_size": 16, "workers": 0, "warmup_steps": 1, "precision": "bf16",
                  "log_every_steps": 1},
        "tracking": {"tracking_uri": own_mlflow_server["url"], "experiment": "faults"},
        "registry": {"model_name": "flame-faults"},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _client(url: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url, registry_uri=url)


def test_mlflow_server_killed_during_a_training_then_restarted_leaves_its_run_complete(
        services, own_mlflow_server, params_file, sample_shards, synthetic_store, tmp_path):
    out = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "flame", "train", "--config", str(params_file), "--profile", "unit",
           "--shards", str(sample_shards), "--embeddings", str(synthetic_store), "--out", str(out)]
    stderr = tmp_path / "train.err"
    with stderr.open("w") as err:
        training = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=dict(services.env()) | {
            "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
        deadline = time.monotonic() + 300
        while "[step 2]" not in stderr.read_text() and time.monotonic() < deadline and training.poll() is None:
            time.sleep(0.05)
        assert training.poll() is None, stderr.read_text()[-3000:]
        stop_server(own_mlflow_server["proc"])  # killed while the training logs to it
        killed_at = time.monotonic()
        time.sleep(5)
        own_mlflow_server["start"]()
        print(f"MLflow server down for {time.monotonic() - killed_at:.1f}s")
        stdout, _ = training.communicate(timeout=600)
    assert training.returncode == 0, stderr.read_text()[-4000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    run = _client(own_mlflow_server["url"]).get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    history = _client(own_mlflow_server["url"]).get_metric_history(run.info.run_id, "train/loss")
    assert {m.step for m in history} == set(range(1, STEPS + 1))
    assert "training/loss.png" in {a.path for a in _client(own_mlflow_server["url"]).list_artifacts(run.info.run_id, "training")}


def test_registering_while_the_mlflow_server_is_down_fails_clearly_and_the_retry_registers_once(
        services, own_mlflow_server, params_file, untrained_checkpoint):
    from flame.app.promotion import register_and_gate

    config = load_config(params_file, "unit")

    def register():  # as the registered_model asset does (pipeline.register), scoring 8 images only
        return register_and_gate(config, None, checkpoint_dir=untrained_checkpoint, training_id="fault-0001", limit=8)

    stop_server(own_mlflow_server["proc"])
    with pytest.raises(FlameError, match="not reachable") as error:
        register()
    assert own_mlflow_server["url"] in str(error.value)
    own_mlflow_server["start"]()
    client = _client(own_mlflow_server["url"])
    assert client.search_model_versions("name='flame-faults'") == []
    assert register().version == "1"
    assert [v.version for v in client.search_model_versions("name='flame-faults'")] == ["1"]


def test_postgres_restarted_between_two_runs_the_next_runs_succeed(services, orchestration_env, tmp_path, monkeypatch):
    from dagster import AssetSelection, DagsterInstance, materialize
    from mlflow import MlflowClient

    from orchestration.definitions import pipeline_assets
    from orchestration.partitions import DATA_SHARDS
    from orchestration.resources import build_resources

    home = tmp_path / "pg_home"
    home.mkdir()
    dagster_db = services.new_database("dagster_fault")
    text = yaml.safe_load(dagster_yaml(services, database_name(dagster_db)))
    text["run_coordinator"] = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}
    (home / "dagster.yaml").write_text(yaml.safe_dump(text), encoding="utf-8")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name, value in services.aws_env.items():
        monkeypatch.setenv(name, value)
    storage = f"{services.unique_prefix('pg-restart')}/data"
    resources = build_resources(params_path=str(orchestration_env["params"]), storage_root=storage,
                                tracking_uri=services.mlflow_url)
    assets = pipeline_assets(load_config(orchestration_env["params"]))
    client = MlflowClient(tracking_uri=services.mlflow_url)
    experiment = client.create_experiment(f"pg-restart-{dagster_db}")

    def one_run(key: str) -> None:
        with DagsterInstance.get() as instance:
            instance.add_dynamic_partitions(DATA_SHARDS.name, [key])
            result = materialize(assets, instance=instance, resources=resources, partition_key=key,
                                 selection=AssetSelection.assets("manifest"), raise_on_error=False)
            assert result.success
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "x", 1.0)
        client.set_terminated(run.info.run_id)

    one_run("slice-00000")
    started = time.monotonic()
    services.restart("postgres")
    print(f"PostgreSQL restarted in {time.monotonic() - started:.1f}s")
    one_run("slice-00001")
    with DagsterInstance.get() as instance:
        assert sorted(r.status.value for r in instance.get_runs()) == ["SUCCESS", "SUCCESS"]
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert len(client.search_runs([experiment])) == 2
