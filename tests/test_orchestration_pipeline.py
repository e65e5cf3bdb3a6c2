"""The whole asset graph materialised in-process on a small slice (32 images, two data
shards, 20 tiny epochs), with a failed training step that leaves the data assets valid
and a re-run (the demo's code path) that continues from them."""

import json
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image
from dagster import AssetCheckKey, AssetKey, AssetSelection, DagsterInstance, materialize

from orchestration import demo
from orchestration.checks import ALL_CHECKS
from orchestration.definitions import pipeline_assets
from flame.data.data_shards import discover_chunks
from orchestration.jobs import INGEST_ASSETS, MODEL_ASSETS
from orchestration.partitions import DATA_SHARDS
from orchestration.resources import MlflowResource
from orchestration.schedules import nothing_new
from tests.fixtures.orchestration import SAMPLE


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _materializations(instance, key: str) -> int:
    from dagster import AssetRecordsFilter

    return len(instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(key)), limit=100).records)


def _meta(instance, key: str) -> dict:
    event = instance.get_latest_materialization_event(AssetKey(key))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@pytest.mark.slow
def test_whole_graph_then_failed_training_resumes_from_valid_data(orchestration_env, capsys):
    from mlflow import MlflowClient

    import flame.model
    from flame.text.store import EmbeddingStore

    env = orchestration_env
    resources = env["resources"]
    config = resources["flame_config"].load()
    storage = env["storage"]
    paths = resources["storage"].paths(config)
    assets = pipeline_assets(config) + ALL_CHECKS
    with DagsterInstance.get() as instance:  # DAGSTER_HOME in tmp_path, shared with the demo below
        keys = [c.key for c in discover_chunks(config)]
        assert keys == ["slice-00000", "slice-00001"]
        instance.add_dynamic_partitions(DATA_SHARDS.name, keys)

        # Data: one run per data shard, checks included.
        for key in keys:
            result = materialize(assets, instance=instance, resources=resources, partition_key=key,
                                 selection=AssetSelection.assets(*INGEST_ASSETS))
            assert result.success
            assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {
                "manifest_rows_usable": True, "download_success_rate": True, "embeddings_valid": True}
        shards = {k: storage / "shards" / f"{k}.tar" for k in keys}
        stamps = {k: p.stat().st_mtime_ns for k, p in shards.items()}
        assert _meta(instance, "image_shards")["success_rate"] == 1.0
        store = EmbeddingStore.open(_meta(instance, "caption_embeddings")["store"])
        assert store.shards() == keys and store.validate()["samples"] == 32

        # All shards embedded, no model yet: the retrain schedule would train.
        assert nothing_new(instance, config, paths) is None
        # A stray tar in the shards folder that no registered data shard names is never read.
        (storage / "shards" / "stray-00000.tar").write_bytes(shards[keys[0]].read_bytes())

        # Training refused up front: the tracking server is unreachable. Nothing is trained,
        # and the data assets stay as they were.
        bad_uri = f"http://127.0.0.1:{_closed_port()}"
        failing = {**resources, "mlflow": MlflowResource(tracking_uri=bad_uri)}
        failed = materialize(assets, instance=instance, resources=failing,
                             selection=AssetSelection.assets(*MODEL_ASSETS), raise_on_error=False)
        assert not failed.success
        (failure,) = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
        assert failure.step_key == "flame_model"
        error = failure.event_specific_data.error
        while error.cause is not None:  # Dagster wraps the asset's own exception
            error = error.cause
        assert error.cls_name == "FlameError"
        assert bad_uri in error.message and "not reachable" in error.message
        assert not (storage / "models").exists()
        assert {k: p.stat().st_mtime_ns for k, p in shards.items()} == stamps
        assert EmbeddingStore.open(store.path).validate()["ok"]

        # The re-run (here: the demo, through Dagster) picks up from the materialised data:
        # every shard is embedded already, so only the model assets run.
        capsys.readouterr()
        assert demo.main(["--config", str(env["params"]), "--profile", env["profile"]]) == 0
        printed = capsys.readouterr().out.strip().splitlines()
        summary = json.loads(printed[-1])
        assert set(summary) >= {"registered_model", "version", "aliases", "checkpoint", "metrics", "seconds"}
        assert any("dagster dev -m orchestration.definitions" in line for line in printed)
        assert any("mlflow ui --backend-store-uri " + env["tracking_uri"] in line for line in printed)
        assert _materializations(instance, "image_shards") == 2
        assert _materializations(instance, "caption_embeddings") == 2
        for asset_key, check in (("flame_model", "training_loss_decreased"), ("evaluation", "evaluation_above_chance")):
            record = instance.get_latest_asset_check_evaluation_record(AssetCheckKey(AssetKey(asset_key), check))
            assert record.evaluation.passed, (asset_key, check)

        trained = _meta(instance, "flame_model")
        # The schedule now skips: the same data and configuration are registered already.
        assert f"training {trained['training_id']}" in nothing_new(instance, config, paths)
        assert trained["data_shards"] == keys
        # What the UI shows: the loss curve inline, the MLflow run as a link.
        assert trained["loss_plot"].startswith("**training loss per epoch**\n\n![") and "(data:image/png;base64," in trained["loss_plot"]
        assert trained["mlflow_run"].startswith("http://127.0.0.1:5000/#/experiments/")
        linked = sorted(p.name for p in (Path(trained["training_set"]) / "shards").iterdir())
        assert linked == [f"{k}.tar" for k in keys]  # not the stray one
        model = flame.model.load(trained["checkpoint"])
        image = Image.open(SAMPLE / "images" / "1000268201_693b08cb0e.jpg").convert("RGB")
        with torch.no_grad():
            assert model.encode_image(model.preprocess(image)[None]).shape == (1, store.D)
        assert trained["steps"] == 40 and len(trained["epoch_losses"]) == 20

        scored = _meta(instance, "evaluation")
        gate = config.registry.gate_metric
        assert 0.0 <= scored["metrics"][gate] <= 1.0
        plots = {k: v for k, v in scored.items() if k.startswith("plot ")}
        assert plots and all("(data:image/png;base64," in v and len(v) < 250_000 for v in plots.values())

        registered = _meta(instance, "registered_model")
        assert registered["version"] == 1 and registered["decision"] == "first-version"
        assert registered["model_version"].endswith(f"/#/models/{config.registry.model_name}/versions/1")
        assert summary["checkpoint"] == trained["checkpoint"] and summary["version"] == 1
        assert sorted(summary["aliases"]) == ["challenger", "champion"]
        assert summary["metrics"][gate] == scored["metrics"][gate]
        client = MlflowClient(tracking_uri=env["tracking_uri"], registry_uri=env["tracking_uri"])
        version = client.get_model_version(config.registry.model_name, "1")
        assert set(version.aliases) == {"champion", "challenger"}
        run = client.get_run(trained["mlflow_run_id"])
        assert version.run_id == run.info.run_id
        assert run.data.params["train.epochs"] == "20"
        # Data versions: this run's params file is in no DVC repository, so DVC records nothing and says why.
        assert len(run.data.tags["git.commit"]) == 40 and "is not a DVC repository" in run.data.tags["dvc.unversioned"]
        assert version.tags["dvc.unversioned"] == run.data.tags["dvc.unversioned"]
        assert run.data.tags["flame.training_id"] == trained["training_id"]
        assert any(name.startswith("sample-dev-retrieval/") for name in run.data.metrics)

        # Registering the same training again registers nothing.
        again = materialize(assets, instance=instance, resources=resources,
                            selection=AssetSelection.assets("registered_model"))
        assert again.success and _meta(instance, "registered_model")["decision"] == "already-registered"
        assert [str(v.version) for v in client.search_model_versions(f"name='{config.registry.model_name}'")] == ["1"]
