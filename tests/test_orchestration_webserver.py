"""A real dagster-webserver on 127.0.0.1: a run launched through its GraphQL API succeeds."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
STATUS = """query Status($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"""
LOCATIONS = """{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        out = json.loads(resp.read())
    assert "errors" not in out, out
    return out["data"]


@pytest.fixture
def webserver(orchestration_env):
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(orchestration_env["dagster_home"]),
           "FLAME_CONFIG": str(orchestration_env["params"]), "FLAME_PROFILE": orchestration_env["profile"]}
    log = open(orchestration_env["tmp"] / "webserver.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-webserver"), "-m", "orchestration.definitions",
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(orchestration_env["tmp"]),
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("dagster-webserver did not start:\n" + (orchestration_env["tmp"] / "webserver.log").read_text()[-3000:])
                time.sleep(1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
def test_run_launched_through_graphql_succeeds(orchestration_env, webserver):
    from dagster import AssetKey, DagsterInstance

    from orchestration.partitions import DATA_SHARDS

    key = "slice-00000"
    with DagsterInstance.get() as instance:  # the webserver's own instance (DAGSTER_HOME)
        instance.add_dynamic_partitions(DATA_SHARDS.name, [key])

    (repo,) = _graphql(webserver, LOCATIONS)["repositoriesOrError"]["nodes"]
    params = {
        "selector": {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"],
                     "jobName": "ingest_data_shard", "assetSelection": [{"path": ["manifest"]}]},
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": key}]},
    }
    launched = _graphql(webserver, LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    deadline = time.monotonic() + 240
    status = None
    while time.monotonic() < deadline:
        status = _graphql(webserver, STATUS, {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS"

    written = orchestration_env["storage"] / "manifests" / f"{key}.jsonl"
    rows = [json.loads(line) for line in written.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 16 and all(r["url"].startswith("file:///") for r in rows)
    with DagsterInstance.get() as instance:
        assert key in instance.get_materialized_partitions(AssetKey("manifest"))
