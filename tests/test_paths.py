"""Paths and MLflow tracking URIs resolve one way: configuration against its params file's
folder, flags against the current folder; reading the registry never creates a store."""

import json

import pytest
import yaml
from mlflow import MlflowClient

from flame.app.cli import main
from flame.config import read_params, repo_root
from flame.paths import normalize_tracking_uri


@pytest.mark.parametrize("uri, expected", [
    ("sqlite:///mlflow.db", "sqlite:////base/mlflow.db"),
    ("sqlite:///../up.db?timeout=5", "sqlite:////up.db?timeout=5"),
    ("sqlite:////abs/x.db", "sqlite:////abs/x.db"),
    ("sqlite:///:memory:", "sqlite:///:memory:"),
    ("x.db", "sqlite:////base/x.db"),
    ("/abs/y.sqlite", "sqlite:////abs/y.sqlite"),
    ("mlruns", "/base/mlruns"),
    ("file:///abs/mlruns", "file:///abs/mlruns"),
    ("file:mlruns", "file:///base/mlruns"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("postgresql://u@host/db", "postgresql://u@host/db"),
    ("databricks", "databricks"),
])
def test_tracking_uri_normalised_against_a_base(uri, expected):
    assert normalize_tracking_uri(uri, "/base") == expected


def _params_in(folder, tracking_uri="sqlite:///mlflow.db"):
    params = read_params(repo_root() / "params.yaml")
    params["profiles"]["tiny"]["tracking"]["tracking_uri"] = tracking_uri
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def _registry_with_model(db, name="flame-tiny"):
    client = MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    client.create_registered_model(name)


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """The current folder: one that holds no configuration and no store."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FLAME_CONFIG", raising=False)
    return cwd


def test_relative_store_of_a_config_is_beside_it_from_any_folder(tmp_path, elsewhere, capsys):
    project = tmp_path / "project"
    params = _params_in(project)
    _registry_with_model(project / "mlflow.db")
    assert main(["registry", "show", "--config", str(params), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_name"] == "flame-tiny"
    assert not (elsewhere / "mlflow.db").exists()


def test_show_on_a_missing_store_is_a_clear_error_and_creates_nothing(tmp_path, elsewhere, capsys):
    project = tmp_path / "project"
    params = _params_in(project)
    assert main(["registry", "show", "--config", str(params)]) == 2
    err = capsys.readouterr().err
    assert f"no MLflow store at {project / 'mlflow.db'}" in err and "nothing has been tracked yet" in err
    assert f"tracking.tracking_uri of {params}" in err
    assert not (project / "mlflow.db").exists() and not (elsewhere / "mlflow.db").exists()

    missing = tmp_path / "nowhere" / "x.db"
    for action in ("show", "rollback", "promote"):
        assert main(["registry", action, "--tracking-uri", str(missing)]) == 2
        err = capsys.readouterr().err
        assert f"no MLflow store at {missing} (--tracking-uri sqlite:///{missing})" in err
    assert not missing.exists() and not missing.parent.exists()


def test_show_with_the_project_config_from_another_folder_creates_no_store(elsewhere, capsys):
    code = main(["registry", "show"])
    err = capsys.readouterr().err
    assert not (elsewhere / "mlflow.db").exists()
    if not (repo_root() / "mlflow.db").exists():
        assert code == 2 and f"no MLflow store at {repo_root() / 'mlflow.db'}" in err
        assert not (repo_root() / "mlflow.db").exists()


def test_a_plain_db_path_is_a_sqlite_store(tmp_path, elsewhere, capsys):
    db = tmp_path / "stores" / "x.db"
    db.parent.mkdir()
    _registry_with_model(db, "plain")
    assert main(["registry", "show", "--tracking-uri", str(db), "--model-name", "plain", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_name"] == "plain"
    # relative to the current folder, as a flag is
    (elsewhere / "here.db").write_bytes(db.read_bytes())
    assert main(["registry", "show", "--tracking-uri", "here.db", "--model-name", "plain", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_name"] == "plain"
