"""A FLAME checkpoint as an MLflow 3 pyfunc model (``log_model(name=...)``).

``predict`` takes a DataFrame with an ``image`` column (base64 bytes, a data URI, or a
file path) and/or a ``text`` column, and returns per row either the embeddings
(``task="embed"``) or zero-shot scores over ``labels`` (``task="zero-shot"``). The model
is logged "from code" (``pyfunc_code.py``), so loading it unpickles nothing; the
checkpoint travels as an artifact in safetensors.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from flame.checkpoint import WEIGHTS_FILE
from flame.config import RAW_FACET_SET, FlameConfig
from flame.data.images import ImageReadError, read_image
from flame.errors import FlameError
from flame.mlflow.store import connect, experiment_name, using_tracking_uri

CODE_FILE = Path(__file__).with_name("pyfunc_code.py")
TASKS = ("embed", "zero-shot")
DEFAULT_TEMPLATE = "a photo of a {}."
PIP_REQUIREMENTS = ["torch", "timm", "transformers", "gguf", "safetensors", "pillow", "pydantic", "pyyaml"]


def model_signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "image", required=False), ColSpec("string", "text", required=False)])
    params = ParamSchema([
        ParamSpec("task", "string", "embed"),
        ParamSpec("labels", "string", ""),
        ParamSpec("template", "string", DEFAULT_TEMPLATE),
        ParamSpec("facet_set", "string", RAW_FACET_SET),
    ])
    return ModelSignature(inputs=inputs, params=params)


def decode_image(value: str, row: int):
    """A PIL image from a file path, a ``data:`` URI or plain base64; errors name the row."""
    text = value.strip()
    source: str | bytes = text
    if not text.startswith("data:") and not (len(text) < 4096 and Path(text).is_file()):
        try:
            source = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise FlameError(f"row {row}: image is neither an existing file nor base64 ({value[:60]!r})") from None
    try:
        return read_image(source)
    except ImageReadError as exc:
        raise FlameError(f"row {row}: image bytes are not a readable image ({exc})") from None


def _present(value: Any) -> bool:
    return isinstance(value, str) and value != ""


class FlamePyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from flame.model import load

        self.model = load(context.artifacts["checkpoint"])

    def _pixels(self, values: list[tuple[int, str]]):
        import torch

        return torch.stack([self.model.preprocess(decode_image(v, i)) for i, v in values])

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd
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
    """Log the checkpoint in ``checkpoint_dir`` as a pyfunc to ``run_id`` (or to a new run in the
    profile's experiment); returns the model URI (``models:/m-...``) that
    ``flame.mlflow.gate.register_model`` takes."""
    import mlflow

    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / WEIGHTS_FILE).exists():
        raise FlameError(f"cannot log model: {checkpoint_dir / WEIGHTS_FILE} does not exist")
    uri = tracking_uri or config.tracking.tracking_uri
    client = connect(config, uri)
    was_running = run_id is not None and client.get_run(run_id).info.status == "RUNNING"
    with using_tracking_uri(uri):
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
