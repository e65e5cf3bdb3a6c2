"""The FLAME pyfunc: logged the MLflow 3 way to a real server, loaded with
mlflow.pyfunc.load_model, and served for real by `mlflow models serve`."""

import base64
import json
import sys
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from flame.errors import FlameError
from flame.model import load
from flame.mlflow.pyfunc import log_flame_model
from flame.mlflow.tracker import MlflowTracker
from tests.fixtures.tracking import free_port, start_server, stop_server

pytestmark = pytest.mark.slow

IMAGES = sorted((Path(__file__).resolve().parents[1] / "data/sample/images").glob("*.jpg"))[:2]


@pytest.fixture(scope="module")
def logged_model(mlflow_server, untrained_checkpoint):
    from flame.config import load_config

    cfg = load_config(overrides={"tracking": {"tracking_uri": mlflow_server, "experiment": "test-pyfunc"}})
    with MlflowTracker(cfg) as tracker:
        model_uri = log_flame_model(cfg, untrained_checkpoint, run_id=tracker.run_id, tracking_uri=tracker.tracking_uri)
        assert tracker.client.get_run(tracker.run_id).info.status == "RUNNING"  # still the tracker's
    mlflow.set_tracking_uri(mlflow_server)
    try:
        return mlflow.models.get_model_info(model_uri), tracker.run_id
    finally:
        mlflow.set_tracking_uri(None)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_logged_with_name_and_signature_and_loadable(mlflow_server, logged_model, untrained_checkpoint, monkeypatch):
    info, run_id = logged_model
    assert info.model_uri.startswith("models:/m-") and info.name == "model" and info.run_id == run_id
    # Logged from code: loading it runs flame's source, never unpickles a model object.
    assert info.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert {c["name"] for c in info.signature.inputs.to_dict()} == {"image", "text"}
    assert {p.name for p in info.signature.params.params} == {"task", "labels", "template", "facet_set"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)

    out = pyfunc.predict(pd.DataFrame({"image": [_b64(IMAGES[0]), str(IMAGES[1])]}))
    got = torch.tensor(out["image_embedding"].tolist())
    model = load(untrained_checkpoint)
    from PIL import Image
    want = model.encode_image(torch.stack([model.preprocess(Image.open(p).convert("RGB")) for p in IMAGES]))
    assert got.shape == (2, 576) and torch.allclose(got, want, atol=1e-4)

    scores = pyfunc.predict(pd.DataFrame({"image": [str(IMAGES[0])]}), params={"task": "zero-shot", "labels": "dog, cat,boat"})
    probs = scores["scores"][0]
    assert len(probs) == 3 and abs(sum(probs) - 1) < 1e-5
    assert scores["label"][0] == ["dog", "cat", "boat"][max(range(3), key=probs.__getitem__)]

    with pytest.raises(Exception, match="neither an existing file nor base64"):
        pyfunc.predict(pd.DataFrame({"image": ["no/such/file.jpg"]}))
    with pytest.raises(Exception, match="needs params.labels"):
        pyfunc.predict(pd.DataFrame({"image": [str(IMAGES[0])]}), params={"task": "zero-shot"})


def test_log_model_refuses_a_folder_without_weights(tracking_config, tmp_path):
    with MlflowTracker(tracking_config) as tracker:
        with pytest.raises(FlameError, match="model.safetensors does not exist"):
            log_flame_model(tracking_config, tmp_path, run_id=tracker.run_id)


def test_served_by_mlflow_models_serve(mlflow_server, logged_model, tmp_path):
    info, _ = logged_model
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", info.model_uri,
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    proc = start_server(cmd, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", timeout=180,
                        env={"MLFLOW_TRACKING_URI": mlflow_server})  # resolves models:/ for the server
    try:
        body = {"dataframe_records": [{"image": _b64(IMAGES[0]), "text": "a dog runs on the grass"}]}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=180) as resp:
            predictions = json.loads(resp.read())["predictions"]
        row = predictions[0]
        assert len(row["image_embedding"]) == 576 and len(row["text_embedding"]) == 576
        norm = sum(x * x for x in row["text_embedding"]) ** 0.5
        assert abs(norm - 1) < 1e-3
    finally:
        stop_server(proc)
