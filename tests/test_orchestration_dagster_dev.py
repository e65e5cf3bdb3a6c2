"""The pipeline as its users work it, against a real ``dagster dev`` (webserver + daemon) in a
fresh clone whose params.yaml has a small profile as its default, on a fresh ``DAGSTER_HOME``
(holding the project's dagster.yaml), ``FLAME_STORAGE_ROOT`` and ``MLFLOW_TRACKING_URI``:

1. the configured data shards become known by themselves (the new_manifest sensor's first tick);
2. "Materialize all" (one asset backfill of every asset over all partitions, through the
   webserver's GraphQL API, as the UI sends it) runs the whole chain to a registered model, and
   leaves DVC's record of it clean (``dvc status``) with nothing but dvc.lock for git;
3. a dry run of the ``retrain`` schedule right after returns a skip that says why;
4. a manifest dropped into the incoming folder is ingested by the sensor (two data shards,
   two runs at once, whose LLM steps never overlap: the flame-llm pool), then the
   declarative automation retrains, evaluates and gates the new model against the champion.
"""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from flame.config import resolved_yaml
from tests.fixtures.clone import clone_env, dvc_status, git, make_clone, only_pointer_files, status_lines
from tests.fixtures.orchestration import INSTANCE_CONFIG, TEST_PROFILE, write_params, write_slice
from tests.fixtures.dagster_dev import (DRY_RUN, LAUNCH, LOCATIONS, PIPELINE, RUN_STATUS, graphql, materialize_all,
                                        running_dagster_dev, wait_for)

pytestmark = pytest.mark.slow


@pytest.fixture
def fresh(orchestration_env, tmp_path, monkeypatch):
    """A fresh clone whose params.yaml has the small test profile as its default (committed), a
    fresh Dagster home holding the project's dagster.yaml, the storage root inside the clone and
    an MLflow store beside it, named only by the environment variables; sensors tick every
    second, automation every 5 s."""
    env = orchestration_env
    clone = make_clone(tmp_path / "clone")
    write_slice(clone / "data" / "sample" / "slice.jsonl", 0, 32, split="dev", relative=True)
    params = write_params(clone / "params.yaml", ["data/sample/slice.jsonl"], "data/incoming", "data",
                          "sqlite:///unused.db", default=True,
                          extra={"orchestration": {"sensor_interval_s": 1, "automation_interval_s": 5,
                                                   "download_retries": 0}})
    (clone / "params.resolved.yaml").write_text(resolved_yaml(params, TEST_PROFILE), encoding="utf-8")
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "a small default profile")
    home = tmp_path / "fresh_home"
    home.mkdir()
    shutil.copyfile(INSTANCE_CONFIG, home / "dagster.yaml")
    storage, incoming = clone / "data", clone / "data" / "incoming"
    tracking_uri = f"sqlite:///{tmp_path / 'fresh_mlflow.db'}"
    for name, value in {"DAGSTER_HOME": home, "FLAME_STORAGE_ROOT": storage, "MLFLOW_TRACKING_URI": tracking_uri,
                        "FLAME_CONFIG": params}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("FLAME_PROFILE", raising=False)  # params.yaml's default
    return {**env, "clone": clone, "home": home, "storage": storage, "incoming": incoming,
            "tracking_uri": tracking_uri, "params": params}


@pytest.fixture
def dagster_dev(fresh):
    environment = {**clone_env(fresh["clone"]), **{k: os.environ[k] for k in
                                                   ("DAGSTER_HOME", "FLAME_STORAGE_ROOT", "MLFLOW_TRACKING_URI", "FLAME_CONFIG")}}
    with running_dagster_dev(fresh["clone"], environment, fresh["tmp"] / "dagster-dev.log") as server:
        yield server


def run_job(port: int, repo: dict, job: str, run_config: dict, log: Path) -> str:
    """Launch ``job`` through GraphQL (as the Launchpad does) and wait for its final status."""
    params = {"selector": {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"],
                           "jobName": job}, "runConfigData": run_config}
    launched = graphql(port, LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    return wait_for(f"run {job}", lambda: (s := graphql(port, RUN_STATUS, {"id": run_id})["runOrError"]["status"])
                    in ("SUCCESS", "FAILURE", "CANCELED") and s, 300, log)


def _materializations(instance, key: str) -> list:
    from dagster import AssetKey, AssetRecordsFilter

    return instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(key)), limit=100).records


def _step_windows(instance, run_id: str, step: str) -> tuple[float, float]:
    from dagster import DagsterEventType

    events = instance.all_logs(run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS})
    times = {e.dagster_event.event_type_value: e.timestamp for e in events if e.step_key == step}
    return times["STEP_START"], times["STEP_SUCCESS"]


def _registry(tracking_uri: str, name: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    versions = [client.get_model_version(name, v.version) for v in client.search_model_versions(f"name='{name}'")]
    return {str(v.version): {"aliases": sorted(v.aliases), "tags": dict(v.tags)} for v in versions}


def test_fresh_instance_materialize_all_then_skip_then_retrain_on_new_data(fresh, dagster_dev):
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    from flame.config import load_config
    from orchestration.partitions import DATA_SHARDS

    port, log = dagster_dev["port"], dagster_dev["log"]
    config = load_config(fresh["params"])
    model_name = config.registry.model_name
    with DagsterInstance.get() as instance:  # the fresh DAGSTER_HOME dagster dev runs on
        # 1. Nobody registered anything: the sensor's first tick does.
        keys = wait_for("the configured data shards", lambda: instance.get_dynamic_partitions(DATA_SHARDS.name), 120, log)
        assert sorted(keys) == ["slice-00000", "slice-00001"]

        # 2. "Materialize all": one backfill of every asset over all partitions.
        status = materialize_all(port, log)
        assert status in ("COMPLETED", "COMPLETED_SUCCESS"), status
        for key in PIPELINE:
            assert _materializations(instance, key), key
        registry = _registry(fresh["tracking_uri"], model_name)
        assert registry["1"]["aliases"] == ["challenger", "champion"]
        assert (fresh["storage"] / "shards" / "slice-00000.tar").is_file()
        # One lineage: DVC has recorded what Dagster made, and git sees nothing but the pointer file.
        assert dvc_status(fresh["clone"]) == "Data and pipelines are up to date."
        changed = status_lines(fresh["clone"])
        assert changed and only_pointer_files(changed), changed

        # 3. Nothing new since: the schedule's dry run skips, and says why.
        (repo,) = graphql(port, LOCATIONS)["repositoriesOrError"]["nodes"]
        selector = {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"],
                    "scheduleName": "retrain"}
        tick = graphql(port, DRY_RUN, {"selector": selector, "timestamp": time.time()})["scheduleDryRun"]
        assert tick["__typename"] == "DryRunInstigationTick", tick
        result = tick["evaluationResult"]
        assert not result["runRequests"] and result["error"] is None, result
        assert "nothing new" in result["skipReason"] and "v1" in result["skipReason"], result["skipReason"]

        # 4. New data: two more data shards, ingested by the sensor, then retrained by automation.
        write_slice(fresh["incoming"] / "batch2.jsonl", 40, 20, split="dev")
        wait_for("the retrained model's registration", lambda: len(_materializations(instance, "registered_model")) >= 2,
                 900, log, every=5)
        ingest = instance.get_runs(RunsFilter(job_name="ingest_data_shard", tags={"flame/manifest": str(fresh["incoming"] / "batch2.jsonl")}))
        assert len(ingest) == 2 and all(r.status == DagsterRunStatus.SUCCESS for r in ingest)
        # The two ingest runs ran at once, but their LLM steps one after the other (pool flame-llm, limit 1).
        runs = [(instance.get_run_record_by_id(r.run_id).start_time, instance.get_run_record_by_id(r.run_id).end_time)
                for r in ingest]
        assert max(s for s, _ in runs) < min(e for _, e in runs), runs
        (a_start, a_end), (b_start, b_end) = sorted(_step_windows(instance, r.run_id, "caption_embeddings") for r in ingest)
        assert a_end <= b_start, ((a_start, a_end), (b_start, b_end))

        assert sorted(instance.get_dynamic_partitions(DATA_SHARDS.name)) == [
            "batch2-00000", "batch2-00001", "slice-00000", "slice-00001"]
        trained = _materializations(instance, "flame_model")[0].event_log_entry.asset_materialization.metadata
        assert trained["data_shards"].value == ["batch2-00000", "batch2-00001", "slice-00000", "slice-00001"]
        registry = _registry(fresh["tracking_uri"], model_name)
        tags = registry["2"]["tags"]
        print("gate decision tags of v2:", json.dumps({k: v for k, v in sorted(tags.items()) if k.startswith("flame.")}, indent=1))
        assert tags["flame.decision"] in ("promoted", "rejected")
        assert ("champion" in registry["2"]["aliases"]) == (tags["flame.decision"] == "promoted")
        assert tags["flame.eval_set"] == registry["1"]["tags"]["flame.eval_set"]
        assert tags["git.commit"] == git(fresh["clone"], "rev-parse", "HEAD").strip()
        assert tags["dvc.data/training_sets"] != registry["1"]["tags"]["dvc.data/training_sets"]
        assert dvc_status(fresh["clone"]) == "Data and pipelines are up to date."

        # 5. The registry's own jobs, from the Launchpad: force v2 to champion, then roll back.
        assert run_job(port, repo, "promote", {"ops": {"promote_champion": {"config": {"version": 2}}}}, log) == "SUCCESS"
        assert "champion" in _registry(fresh["tracking_uri"], model_name)["2"]["aliases"]
        assert run_job(port, repo, "rollback", {}, log) == "SUCCESS"
        registry = _registry(fresh["tracking_uri"], model_name)
        assert "champion" in registry["1"]["aliases"] and "champion" not in registry["2"]["aliases"]
