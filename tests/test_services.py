"""The deployed setup against real servers (scripts/services.sh): PostgreSQL with MLflow's and
Dagster's databases, S3, the MLflow server with proxied artifacts in S3, a Dagster instance on
PostgreSQL from deploy/dagster.yaml; and deploy/'s files themselves."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import pytest
import yaml

from tests.fixtures.services import (
    AWS_KEYS,
    DEPLOY_DAGSTER_YAML,
    REPO,
    SKIP_REASON,
    Services,
    dagster_yaml,
    database_name,
)

DEPLOY = REPO / "deploy"


def _s3(services: Services):
    import boto3

    return boto3.client("s3", endpoint_url=services.s3_endpoint, region_name=services.aws_env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=services.aws_env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=services.aws_env["AWS_SECRET_ACCESS_KEY"])


def _scalar(services: Services, db: str, sql: str, args: tuple = ()):
    conn = services.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            row = cur.fetchone()
            return row[0] if row else None
    finally:
        conn.close()


def _without_aws(monkeypatch) -> None:
    for key in AWS_KEYS:
        monkeypatch.delenv(key, raising=False)


# --- the servers ----------------------------------------------------------------------------


@pytest.mark.services
def test_postgres_has_the_mlflow_and_dagster_databases(services):
    import sqlalchemy

    conn = services.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database")
            owners = dict(cur.fetchall())
    finally:
        conn.close()
    assert owners["mlflow"] == "flame" and owners["dagster"] == "flame"
    # The URLs name psycopg2: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3.
    engine = sqlalchemy.create_engine(services.mlflow_db_url)
    try:
        with engine.connect() as c:
            assert c.execute(sqlalchemy.text("SELECT current_database(), current_user")).one() == ("mlflow", "flame")
    finally:
        engine.dispose()


@pytest.mark.services
def test_s3_round_trip(services, monkeypatch):
    """boto3 and fsspec's s3 file system (what the library reads storage URLs with) see the
    same objects; fsspec is configured by the environment alone, as in deploy/compose.yaml."""
    import s3fs
    from upath import UPath

    prefix = services.unique_prefix("round-trip")
    key = prefix.removeprefix(f"s3://{services.bucket}/") + "/hello.txt"
    s3 = _s3(services)
    s3.put_object(Bucket=services.bucket, Key=key, Body=b"written by boto3")
    assert s3.get_object(Bucket=services.bucket, Key=key)["Body"].read() == b"written by boto3"

    for name, value in services.aws_env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    assert (UPath(prefix) / "hello.txt").read_bytes() == b"written by boto3"
    (UPath(prefix) / "sub" / "again.txt").write_bytes(b"written by s3fs")
    assert s3.get_object(Bucket=services.bucket, Key=key.replace("hello.txt", "sub/again.txt"))["Body"].read() \
        == b"written by s3fs"
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.services
@pytest.mark.slow
def test_mlflow_server_keeps_runs_in_postgres_and_artifacts_in_s3(services, monkeypatch, tmp_path):
    """The client has no S3 credentials at all: artifacts go through the server (proxied)."""
    from mlflow import MlflowClient

    _without_aws(monkeypatch)
    client = MlflowClient(tracking_uri=services.mlflow_url)
    experiment_id = client.create_experiment(f"services-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment_id)
    run_id = run.info.run_id
    client.log_metric(run_id, "loss", 0.25, step=3)
    artifact = tmp_path / "note.txt"
    artifact.write_text("an artifact", encoding="utf-8")
    client.log_artifact(run_id, str(artifact), artifact_path="notes")
    client.set_terminated(run_id)

    assert client.get_run(run_id).data.metrics == {"loss": 0.25}
    assert [f.path for f in client.list_artifacts(run_id, "notes")] == ["notes/note.txt"]

    key = f"mlflow/{experiment_id}/{run_id}/artifacts/notes/note.txt"
    listed = _s3(services).list_objects_v2(Bucket=services.bucket, Prefix=f"mlflow/{experiment_id}/{run_id}/")
    assert [o["Key"] for o in listed.get("Contents", [])] == [key]
    assert _s3(services).get_object(Bucket=services.bucket, Key=key)["Body"].read() == b"an artifact"

    db = database_name(services.mlflow_db_url)
    assert _scalar(services, db, "SELECT status FROM runs WHERE run_uuid = %s", (run_id,)) == "FINISHED"
    assert _scalar(services, db, "SELECT value FROM metrics WHERE run_uuid = %s AND key = 'loss' AND step = 3",
                   (run_id,)) == 0.25


def _check_postgres_instance(services: Services, instance, db: str) -> None:
    from dagster import DagsterRunStatus, asset, materialize
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    concurrency = instance.get_concurrency_config()
    assert concurrency.pool_config.default_pool_limit == 1
    assert concurrency.run_queue_config.max_concurrent_runs == 4
    assert [limit["key"] for limit in concurrency.run_queue_config.tag_concurrency_limits] == ["flame/manifest"]
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 1

    @asset
    def answer() -> int:
        return 42

    result = materialize([answer], instance=instance)
    assert result.success
    assert instance.get_run_by_id(result.run_id).status == DagsterRunStatus.SUCCESS
    assert _scalar(services, db, "SELECT status FROM runs WHERE run_id = %s", (result.run_id,)) == "SUCCESS"
    assert _scalar(services, db, "SELECT count(*) FROM event_logs WHERE run_id = %s", (result.run_id,)) > 0
    assert _scalar(services, db, "SELECT count(*) FROM event_logs WHERE asset_key = %s",
                   ('["answer"]',)) > 0


@pytest.mark.services
@pytest.mark.slow
def test_deploy_dagster_yaml_keeps_the_instance_in_postgres(services, tmp_path, monkeypatch):
    """deploy/dagster.yaml as it is, its settings from DAGSTER_PG_* (as compose passes them)."""
    from dagster import DagsterInstance

    db = database_name(services.new_database("dagster_deploy"))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DEPLOY_DAGSTER_YAML.read_text(encoding="utf-8"), encoding="utf-8")
    p = services.dagster_pg
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name, value in {"HOST": p["host"], "PORT": str(p["port"]), "USER": p["username"],
                        "PASSWORD": p["password"], "DB": db}.items():
        monkeypatch.setenv(f"DAGSTER_PG_{name}", value)
    instance = DagsterInstance.get()
    try:
        _check_postgres_instance(services, instance, db)
    finally:
        instance.dispose()
    assert not any(home.glob("**/*.db")), "no SQLite file beside dagster.yaml"


@pytest.mark.services
@pytest.mark.slow
def test_dagster_yaml_helper_renders_a_postgres_instance(services, tmp_path):
    from dagster import DagsterInstance

    db = database_name(services.new_database("dagster_helper"))
    (tmp_path / "dagster.yaml").write_text(dagster_yaml(services, db), encoding="utf-8")
    instance = DagsterInstance.from_config(str(tmp_path))
    try:
        _check_postgres_instance(services, instance, db)
    finally:
        instance.dispose()


@pytest.mark.services
@pytest.mark.slow
def test_postgres_restart_keeps_data(services):
    """Last in this file: the other tests' servers are briefly without their database."""
    from mlflow import MlflowClient

    db = database_name(services.new_database("restart"))
    conn = services.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (note text)")
            cur.execute("INSERT INTO kept VALUES ('before the restart')")
    finally:
        conn.close()
    services.restart("postgres")
    assert _scalar(services, db, "SELECT note FROM kept") == "before the restart"
    # The MLflow server reconnects by itself.
    client = MlflowClient(tracking_uri=services.mlflow_url)
    experiment_id = client.create_experiment(f"after-restart-{uuid.uuid4().hex[:8]}")
    assert client.get_experiment(experiment_id).name.startswith("after-restart-")


# --- deploy/ and the fixture, without servers ------------------------------------------------


def test_compose_names_every_server_and_the_pipeline_environment():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {"postgres", "minio", "createbucket", "mlflow", "code", "webserver", "daemon"}
    for name in ("code", "webserver", "daemon"):
        env = services[name]["environment"]
        assert env["FLAME_STORAGE_ROOT"] == "s3://flame/data"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert env["DAGSTER_HOME"] == "/opt/dagster/home"
        assert {f"DAGSTER_PG_{k}" for k in ("HOST", "PORT", "USER", "PASSWORD", "DB")} <= set(env)
        assert "./dagster.yaml:/opt/dagster/home/dagster.yaml:ro" in services[name]["volumes"]
    assert "orchestration.definitions" in services["code"]["command"]
    mlflow_cmd = services["mlflow"]["command"]
    assert any(a.startswith("--backend-store-uri=postgresql+psycopg2://") for a in mlflow_cmd)
    assert "--artifacts-destination=s3://flame/mlflow" in mlflow_cmd
    env_example = (DEPLOY / ".env.example").read_text(encoding="utf-8")
    for var in ("POSTGRES_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        assert f"\n{var}=" in env_example


def test_workspace_loads_the_code_location_over_grpc():
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text(encoding="utf-8"))
    assert workspace["load_from"] == [{"grpc_server": {"host": "code", "port": 4000, "location_name": "flame"}}]


def test_deploy_dagster_yaml_is_a_valid_instance_config(tmp_path):
    """Dagster's own schema check; the servers' settings come from DAGSTER_PG_*."""
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text(DEPLOY_DAGSTER_YAML.read_text(encoding="utf-8"), encoding="utf-8")
    config, _ = dagster_instance_config(str(tmp_path))
    db = config["storage"]["postgres"]["postgres_db"]
    assert {k: v for k, v in db.items() if isinstance(v, dict)} == {
        "hostname": {"env": "DAGSTER_PG_HOST"}, "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USER"}, "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"}}
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == 4
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"


@pytest.mark.slow
def test_without_servers_the_tests_skip_in_one_line_and_fail_when_required(tmp_path):
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.fixtures.services"]\n', encoding="utf-8")
    (tmp_path / "test_needs_services.py").write_text(textwrap.dedent("""
        def test_one(services):
            pass

        def test_two(services):
            pass
    """), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLAME_SERVICES_DIR": str(tmp_path / "nothing-here")}
    env.pop("FLAME_REQUIRE_SERVICES", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-c", os.devnull, str(tmp_path)]
    skipped = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "2 skipped" in skipped.stdout
    reasons = [line.split(": ", 1)[1] for line in skipped.stdout.splitlines() if line.startswith("SKIPPED")]
    assert reasons == [SKIP_REASON, SKIP_REASON], skipped.stdout

    required = subprocess.run(cmd, cwd=tmp_path, env={**env, "FLAME_REQUIRE_SERVICES": "1"}, capture_output=True,
                              text=True, timeout=120)
    assert required.returncode == 1, required.stdout + required.stderr
    assert "2 errors" in required.stdout and "FLAME_REQUIRE_SERVICES=1" in required.stdout
