"""A FLAME checkpoint as an MLflow 3 pyfunc model (``log_model(name=...)``).

``predict`` takes a DataFrame with an ``image`` column (base64 bytes, a data URI, or a
file path) and/or a ``text`` column, and returns per row either the embeddings
(``task="embed"``) or zero-shot scores over ``labels`` (``task="zero-shot"``). The model
is logged "from code" (``flame/mlflow_model_code.py``), so loading it unpickles nothing;
the checkpoint travels as an artifact in safetensors.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from flame.config import FlameConfig
from flame.errors import FlameError

CODE_FILE = Path(__file__).with_name("mlflow_model_code.py")
TASKS = ("embed", "zero-shot")
DEFAULT_TEMPLATE = "a photo of a {}."


def model_signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "image", required=False), ColSpec("string", "text", required=False)])
    params = ParamSchema([
        ParamSpec("task", "string", "embed"),
        ParamSpec("labels", "string", ""),
        ParamSpec("template", "string", DEFAULT_TEMPLATE),
        ParamSpec("facet_set", "string", "raw"),
    ])
    return ModelSignature(inputs=inputs, params=params)


def decode_image(value: str, row: int):
    """A PIL image from a file path, a ``data:`` URI or plain base64; errors name the row."""
    from PIL import Image, UnidentifiedImageError

    text = value.strip()
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    elif len(text) < 4096 and Path(text).is_file():
        data = Path(text).read_bytes()
        text = None
    if text is not None:
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise FlameError(f"row {row}: image is neither an existing file nor base64 ({value[:60]!r})") from None
    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise FlameError(f"row {row}: image bytes are not a readable image ({exc})") from None


def _present(value: Any) -> bool:
    return isinstance(value, str) and value != ""


class FlamePyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from flame.model import load

        self.model = load(context.artifacts["checkpoint"])

    def _embed_images(self, values: list[tuple[int, str]]):
        import torch

        pixels = torch.stack([self.model.preprocess(decode_image(v, i)) for i, v in values])
        with torch.no_grad():
            return self.model.encode_image(pixels).float()

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd
        import torch

        params = params or {}
        task = params.get("task") or "embed"
        if task not in TASKS:
            raise FlameError(f"unknown task {task!r}; use one of {TASKS}")
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
            with torch.no_grad():
                class_emb = self.model.encode_text([template.format(l) for l in labels], params.get("facet_set") or "raw")
                logits = self.model.logits(self._embed_images(images), class_emb.float())
            probs = logits.softmax(dim=-1)
            out_label, out_scores = [None] * n, [None] * n
            for (i, _), p in zip(images, probs):
                out_scores[i] = [float(x) for x in p]
                out_label[i] = labels[int(p.argmax())]
            return pd.DataFrame({"label": out_label, "scores": out_scores})
        image_out, text_out = [None] * n, [None] * n
        if images:
            for (i, _), e in zip(images, self._embed_images(images)):
                image_out[i] = [float(x) for x in e]
        if texts:
            with torch.no_grad():
                emb = self.model.encode_text([t for _, t in texts], params.get("facet_set") or "raw").float()
            for (i, _), e in zip(texts, emb):
                text_out[i] = [float(x) for x in e]
        if not images and not texts:
            raise FlameError("no input: give an 'image' column (base64 or path) and/or a 'text' column")
        return pd.DataFrame({"image_embedding": image_out, "text_embedding": text_out})


PIP_REQUIREMENTS = ["torch", "timm", "transformers", "gguf", "safetensors", "pillow", "pydantic", "pyyaml"]


def log_flame_model(config: FlameConfig, checkpoint_dir: str | Path, run_id: str | None = None,
                    name: str = "model", tracking_uri: str | None = None) -> str:
    """Log the checkpoint in ``checkpoint_dir`` as a pyfunc to ``run_id`` (or to a new run in the
    profile's experiment); returns the model URI (``models:/m-...``) that
    ``flame.registry.register_model`` takes."""
    import mlflow

    from flame.tracking_mlflow import check_tracking_uri, experiment_name

    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / "model.safetensors").exists():
        raise FlameError(f"cannot log model: {checkpoint_dir}/model.safetensors does not exist")
    uri = tracking_uri or config.tracking.tracking_uri
    check_tracking_uri(uri, config.tracking.connect_timeout)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        was_running = run_id is not None and client.get_run(run_id).info.status == "RUNNING"
        if run_id is None:
            mlflow.set_experiment(experiment_name(config))
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=str(CODE_FILE),
                artifacts={"checkpoint": str(checkpoint_dir)},
                signature=model_signature(),
                pip_requirements=PIP_REQUIREMENTS,
            )
        if was_running:  # leaving start_run() ended the run; its owner (a tracker) is still logging
            client.update_run(run_id, status="RUNNING")
        return info.model_uri
    finally:
        mlflow.set_tracking_uri(previous)
