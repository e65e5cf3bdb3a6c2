"""The pipeline with its state on real servers (``scripts/services.sh``): a Dagster instance in
PostgreSQL (deploy/dagster.yaml), an MLflow server on PostgreSQL with its artifacts in S3, the
storage root and the DVC remote in the bucket.

"Materialize all" runs through a real ``dagster dev``'s GraphQL in a fresh clone to a registered
champion; then the data, the model's files and the rows are where the servers keep them, and
nothing of it on the clone's disk. A second clone, in another folder, that shares only the
servers' URLs and the bucket, serves the champion over REST and pulls its training set by hash.
"""

import base64
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from flame.config import load_config
from flame.digest import sha256_file
from flame.locations import fetch, location
from flame.storage import StoragePaths
from tests.fixtures.clone import REPO, VENV_BIN, clone_env, git, make_clone, status_lines
from tests.fixtures.dagster_dev import PIPELINE, materialize_all, running_dagster_dev, step_failures, wait_for
from tests.fixtures.orchestration import write_params, write_slice
from tests.fixtures.services import dagster_yaml, database_name
from tests.fixtures.tracking import free_port, start_server, stop_server

pytestmark = [pytest.mark.slow, pytest.mark.services]

LOCAL_DATA = ("manifests", "downloads", "shards", "embeddings", "training_sets", "models", "evaluations")
IMAGE = sorted((REPO / "data" / "sample" / "images").glob("*.jpg"))[0]


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def use_dvc_remote(clone: Path, url: str, env: dict) -> None:
    """The bucket as the clone's default DVC remote, in .dvc/config.local (per machine, not committed)."""
    run([str(VENV_BIN / "dvc"), "remote", "add", "--local", "--default", "objects", url], clone, env)


def bucket_keys(services, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=services.s3_endpoint, **_credentials(services))
    keys, token = [], None
    while True:
        page = client.list_objects_v2(Bucket=services.bucket, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


def _credentials(services) -> dict:
    env = services.aws_env
    return {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
            "region_name": env["AWS_DEFAULT_REGION"]}


def rows(services, db_url: str, query: str, *args) -> list[tuple]:
    conn = services.connect(database_name(db_url))
    try:
        with conn.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall()
    finally:
        conn.close()


@pytest.fixture
def deployed(services, tmp_path, monkeypatch):
    """A fresh clone whose default profile is small, with its storage root and DVC remote in a
    fresh prefix of the bucket, MLflow on the services' server, and a fresh Dagster home whose
    dagster.yaml (deploy/'s) keeps the instance in a fresh PostgreSQL database."""
    prefix = services.unique_prefix("e2e")
    tag = prefix.rsplit("-", 1)[1]
    clone = make_clone(tmp_path / "clone")
    write_slice(clone / "data" / "sample" / "slice.jsonl", 0, 32, split="dev", relative=True)
    storage = f"{prefix}/data"
    params = write_params(clone / "params.yaml", ["data/sample/slice.jsonl"], "data/incoming", storage,
                          services.mlflow_url, default=True,
                          extra={"orchestration": {"sensor_interval_s": 1, "automation_interval_s": 5,
                                                   "download_retries": 0},
                                 "tracking": {"experiment": f"servers-{tag}"},
                                 "registry": {"model_name": f"flame-servers-{tag}"}})
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "a small default profile, its storage in the bucket")
    env = {**clone_env(clone), **services.env()}
    use_dvc_remote(clone, f"{prefix}/dvc", env)
    home = tmp_path / "dagster_home"
    home.mkdir()
    dagster_db = services.new_database("dagster_e2e")
    (home / "dagster.yaml").write_text(dagster_yaml(services, database_name(dagster_db)), encoding="utf-8")
    env.update(DAGSTER_HOME=str(home), FLAME_CONFIG=str(params), FLAME_STORAGE_ROOT=storage,
               MLFLOW_TRACKING_URI=services.mlflow_url)
    for name in ("DAGSTER_HOME", "FLAME_CONFIG", "FLAME_STORAGE_ROOT", "MLFLOW_TRACKING_URI", *services.aws_env):
        monkeypatch.setenv(name, env[name])
    monkeypatch.delenv("FLAME_PROFILE", raising=False)
    return {"clone": clone, "env": env, "prefix": prefix, "storage": storage, "params": params,
            "dagster_db": dagster_db, "tmp": tmp_path}


def test_materialize_all_on_the_servers_then_a_second_machine_serves_and_pulls(services, deployed, tmp_path,
                                                                                 monkeypatch):
    from dagster import DagsterInstance
    from mlflow import MlflowClient

    from orchestration.partitions import DATA_SHARDS

    clone, env = deployed["clone"], deployed["env"]
    config = load_config(deployed["params"])
    name = config.registry.model_name
    log = tmp_path / "dagster-dev.log"
    with running_dagster_dev(clone, env, log) as server, DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        keys = wait_for("the configured data shards", lambda: instance.get_dynamic_partitions(DATA_SHARDS.name), 120, log)
        assert sorted(keys) == ["slice-00000", "slice-00001"]
        status = materialize_all(server["port"], log)
        assert status in ("COMPLETED", "COMPLETED_SUCCESS"), (status, step_failures(instance))

    # The registered champion, its run finished, on the MLflow server.
    client = MlflowClient(tracking_uri=services.mlflow_url, registry_uri=services.mlflow_url)
    (version,) = client.search_model_versions(f"name='{name}'")
    version = client.get_model_version(name, version.version)
    assert version.version == "1" and sorted(version.aliases) == ["challenger", "champion"]
    run_id = version.run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    training_id = version.tags["flame.training_id"]
    lineage = {k: v for k, v in version.tags.items() if k.startswith("dvc.")}
    assert list(lineage) == [f"dvc.data/training_sets/{training_id}"], version.tags
    assert version.tags["git.commit"] == git(clone, "rev-parse", "HEAD").strip()

    # The pipeline's data, in the bucket.
    paths = StoragePaths(deployed["storage"])
    for path in (paths.shard("slice-00000"), paths.shard("slice-00001"), paths.model(training_id) / "model.safetensors",
                 paths.model(training_id) / "train_state.pt", paths.training_set(training_id) / "training_set.json",
                 paths.evaluation(training_id)):
        assert path.is_file(), path
    assert len(list(paths.embeddings.glob("*/meta.json"))) == 1
    # The model's files and the run's, in the bucket, under the MLflow server's artifact destination.
    artifacts = bucket_keys(services, "mlflow/")
    assert any(version.source.rsplit("/", 1)[-1] in k and k.endswith("MLmodel") for k in artifacts), version.source
    assert any(run_id in k and k.endswith("training/loss.png") for k in artifacts)
    # Runs and the model version are rows in PostgreSQL.
    assert rows(services, services.mlflow_db_url, "select status from runs where run_uuid = %s", run_id) == [("FINISHED",)]
    assert rows(services, services.mlflow_db_url, "select version from model_versions where name = %s", name) == [(1,)]
    assert rows(services, deployed["dagster_db"], "select count(*) from runs where status = 'SUCCESS'")[0][0] >= 3
    materialized = rows(services, deployed["dagster_db"], "select distinct asset_key from event_logs "
                        "where dagster_event_type = 'ASSET_MATERIALIZATION'")
    assert sorted(json.loads(k)[0] for (k,) in materialized) == sorted(PIPELINE)
    # Nothing of it on this machine's disk: no data folder, no MLflow store, git sees nothing new.
    for folder in LOCAL_DATA:
        assert not (clone / "data" / folder).exists(), folder
    assert not any((clone / n).exists() for n in ("mlflow.db", "mlruns", "mlartifacts", "dvc.lock"))
    assert status_lines(clone) == []

    # A second machine: another clone, sharing only the servers' URLs and the bucket.
    other = make_clone(tmp_path / "machine2")
    other_env = {**clone_env(other), **services.env()}
    use_dvc_remote(other, f"{deployed['prefix']}/dvc", other_env)
    dest = f"pulled/{training_id}"
    md5 = lineage[f"dvc.data/training_sets/{training_id}"]
    run([sys.executable, "-m", "orchestration.versioning", "pull", "--md5", md5, "--dest", dest], other, other_env)
    pulled = other / dest
    for key in ("slice-00000", "slice-00001"):
        assert sha256_file(pulled / "shards" / f"{key}.tar") == sha256_file(fetch(location(paths.shard(key))))
    assert (pulled / "training_set.json").is_file()

    port = free_port()
    monkeypatch.chdir(other)
    cmd = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion", "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    serving = start_server(cmd, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", timeout=240,
                           env=services.env())
    try:
        body = {"dataframe_records": [{"image": base64.b64encode(IMAGE.read_bytes()).decode(), "text": "a dog"}]}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=240) as response:
            (prediction,) = json.loads(response.read())["predictions"]
    finally:
        stop_server(serving)
    assert len(prediction["image_embedding"]) == len(prediction["text_embedding"]) > 0
