"""MlflowTracker against a real `mlflow server` process."""

import time

import pytest
from mlflow import MlflowClient

from flame.config import load_config
from flame.errors import FlameError
from flame.mlflow.store import check_tracking_uri, experiment_name, metric_name
from flame.mlflow.tracker import MlflowTracker
from tests.fixtures.tracking import free_port


@pytest.mark.slow
def test_one_run_logs_config_metrics_evaluation_and_artifacts(tracking_config, tmp_path):
    eval_json = tmp_path / "eval.json"
    eval_json.write_text('{"summary": {"sample-dev-retrieval/mean_recall@5": 0.25}}')
    with MlflowTracker(tracking_config, run_name="unit", tags={"git.commit": "abc"}) as tracker:
        for step, loss in enumerate([2.0, 1.5, 1.2]):
            tracker.log_metrics({"train/loss": loss, "train/lr": 1e-4, "note": "not a number"}, step=step)
        tracker.log_metrics({"epoch/loss": 1.4}, step=1)
        tracker.log_evaluation({"sample-dev-retrieval/mean_recall@5": 0.25}, files=[eval_json])
        run_id = tracker.run_id

    client = MlflowClient(tracking_uri=tracking_config.tracking.tracking_uri)
    run = client.get_run(run_id)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == tracking_config.tracking.experiment
    assert run.info.status == "FINISHED"
    flat = tracking_config.to_flat_dict()
    assert len(flat) > 50
    assert run.data.params == {k: str(v) for k, v in flat.items()}
    assert run.data.tags["git.commit"] == "abc" and run.data.tags["flame.profile"] == "tiny"
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 2.0), (1, 1.5), (2, 1.2)]
    assert "note" not in run.data.metrics
    assert run.data.metrics[metric_name("sample-dev-retrieval/mean_recall@5")] == 0.25
    assert [a.path for a in client.list_artifacts(run_id, "evaluation")] == ["evaluation/eval.json"]


@pytest.mark.slow
def test_resumed_training_continues_the_same_run(tracking_config):
    first = MlflowTracker(tracking_config)
    first.log_metrics({"train/loss": 3.0}, step=0)
    first.close("KILLED")
    again = MlflowTracker(tracking_config, run_id=first.run_id)
    again.log_metrics({"train/loss": 2.0}, step=1)
    # A resumed training logs its (possibly overridden) config again: no error, changes kept as tags.
    again.log_params({**tracking_config.to_flat_dict(), "train.epochs": 99})
    again.close()
    client = MlflowClient(tracking_uri=tracking_config.tracking.tracking_uri)
    run = client.get_run(first.run_id)
    assert run.data.params["train.epochs"] == str(tracking_config.train.epochs)
    assert run.data.tags["flame.param_changed.train.epochs"] == "99"
    assert len(client.get_metric_history(first.run_id, "train/loss")) == 2
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert len(client.search_runs([first.experiment_id])) == 1


def test_experiment_defaults_to_one_per_profile():
    assert experiment_name(load_config(profile="tiny")) == "flame-tiny"
    assert experiment_name(load_config(profile="small")) == "flame-small"
    assert metric_name("sample-dev-retrieval/mean_recall@5") == "sample-dev-retrieval/mean_recall_at_5"


def test_unreachable_server_is_a_clear_error_before_any_run():
    uri = f"http://127.0.0.1:{free_port()}"
    cfg = load_config(overrides={"tracking": {"tracking_uri": uri, "connect_timeout": 2}})
    started = time.monotonic()
    with pytest.raises(FlameError) as err:
        MlflowTracker(cfg)
    assert uri in str(err.value) and "not reachable" in str(err.value)
    assert time.monotonic() - started < 10


def test_unwritable_local_store_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    uri = f"sqlite:///{blocker}/sub/mlflow.db"
    with pytest.raises(FlameError, match="not writable"):
        check_tracking_uri(uri)
    check_tracking_uri(f"sqlite:///{tmp_path}/new/mlflow.db")  # a folder still to be made is fine


def test_sqlite_store_keeps_artifacts_beside_it_not_in_the_current_folder(tmp_path, monkeypatch):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    store = tmp_path / "store"
    store.mkdir()
    report = tmp_path / "report.json"
    report.write_text("{}")
    cfg = load_config(overrides={"tracking": {"tracking_uri": f"sqlite:///{store / 'mlflow.db'}", "experiment": "beside"}})
    with MlflowTracker(cfg) as tracker:
        tracker.log_artifact(report, "evaluation")
    assert not (cwd / "mlruns").exists() and list(cwd.iterdir()) == []
    assert list((store / "mlartifacts" / "beside").glob("*/artifacts/evaluation/report.json"))


def test_a_relative_tracking_uri_in_the_config_is_beside_it(tmp_path, monkeypatch):
    import yaml

    from flame.config import read_params

    params = read_params()
    params["profiles"]["tiny"]["tracking"]["tracking_uri"] = "sqlite:///runs.db"
    (tmp_path / "project").mkdir()
    path = tmp_path / "project" / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with MlflowTracker(load_config(path)) as tracker:
        tracker.log_metrics({"loss": 1.0})
    assert tracker.tracking_uri == f"sqlite:///{tmp_path / 'project' / 'runs.db'}"
    assert (tmp_path / "project" / "runs.db").is_file() and not (tmp_path / "runs.db").exists()
