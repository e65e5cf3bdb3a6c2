"""The one checkpoint layout: every file of a ``flame train --out`` folder is named, written
and read here, so writers and readers cannot drift apart.

- ``model.safetensors``: the FlameModel weights (safetensors, never pickle);
- ``model_config.json``: how to rebuild the model (``flame.model.ModelConfig``), plus the
  format version and the training's counters (``MODEL_COUNTERS``);
- ``train_state.pt``: the weights again, with optimizer, scheduler, counters and RNG,
  readable with ``torch.load(weights_only=True)``;
- ``metrics.jsonl``, ``train_summary.json``: the training log and its summary;
- ``loss.png``, ``mlflow_run.json``: the loss curve and the MLflow run of the folder,
  written by the orchestration's training step.

Every file is written atomically. The model files come first and the train state last; a
resume reads only the train state, which holds everything it needs, so a run killed between
the two writes resumes from the previous step (the model files are then one save ahead).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from flame.atomic import atomic_path, write_json
from flame.errors import FlameError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "train_summary.json"
LOSS_PLOT_FILE = "loss.png"
MLFLOW_RUN_FILE = "mlflow_run.json"
MODEL_FILES = (WEIGHTS_FILE, CONFIG_FILE)  # what loading the model reads

MODEL_FORMAT_VERSION = 1
STATE_FORMAT_VERSION = 2
# What model_config.json records of the training beside the model's config: its steps and
# epochs so far, the fingerprint of the texts it read and its id (``flame.train.identity``).
MODEL_COUNTERS = ("trained_steps", "trained_epochs", "embedding_store", "training_id")


def checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint folder of ``path`` (the folder itself, or its ``model.safetensors``)."""
    path = Path(path)
    return path.parent if path.is_file() else path


def has_checkpoint(directory: str | Path) -> bool:
    """Whether ``directory`` holds a training that can be resumed."""
    return (Path(directory) / STATE_FILE).is_file()


# ---- the model -------------------------------------------------------------------------


def write_model(directory: str | Path, state: dict[str, torch.Tensor], config: dict[str, Any],
                counters: dict[str, Any] | None = None) -> Path:
    """Weights, then the config with the format version and ``counters`` (keys of
    ``MODEL_COUNTERS``, also kept in the weights' metadata)."""
    counters = counters or {}
    if unknown := sorted(set(counters) - set(MODEL_COUNTERS)):
        raise ValueError(f"not a counter of {CONFIG_FILE}: {unknown}; known: {list(MODEL_COUNTERS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    metadata = {"format": "pt", **{k: json.dumps(v) for k, v in counters.items()}}
    with atomic_path(directory / WEIGHTS_FILE, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    write_json(directory / CONFIG_FILE, {"format_version": MODEL_FORMAT_VERSION, **config, **counters})
    return directory


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """The record of ``model_config.json`` as written (``flame.model.read_config`` types it)."""
    directory = checkpoint_dir(directory)
    if not directory.exists():
        raise FlameError(f"checkpoint folder not found: {directory}")
    for needed in (directory / CONFIG_FILE, directory / WEIGHTS_FILE):
        if not needed.exists():
            raise FlameError(f"not a FLAME checkpoint: {needed} is missing")
    path = directory / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FlameError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format_version") != MODEL_FORMAT_VERSION:
        found = config.get("format_version") if isinstance(config, dict) else None
        raise FlameError(f"{path}: format_version {found!r} unsupported (want {MODEL_FORMAT_VERSION})")
    return config


def read_model_weights(directory: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The weights; refuses a file with any NaN or infinite value, naming the first such tensor."""
    path = checkpoint_dir(directory) / WEIGHTS_FILE
    try:
        state = load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise FlameError(f"{path}: not a readable safetensors file ({exc})") from None
    return check_finite(state, path)


def check_finite(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    for name, tensor in state.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not torch.isfinite(tensor).all():
            raise FlameError(f"{path}: tensor {name!r} holds NaN/Inf values; the checkpoint is corrupt "
                             "(a diverged or damaged training): use an earlier checkpoint or train again")
    return state


# ---- the training state -------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, model, train_state: dict[str, Any], training_id: str) -> Path:
    """``model`` (a FlameModel) first, then the train state that names the same step."""
    directory = Path(directory)
    model.save(directory, counters={"trained_steps": train_state["step"], "trained_epochs": train_state["epoch"],
                                    "embedding_store": train_state.get("store_fingerprint"), "training_id": training_id})
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    state = {"format_version": STATE_FORMAT_VERSION, **train_state, "model": weights, "rng": rng_state()}
    with atomic_path(directory / STATE_FILE, suffix=".pt") as tmp:
        torch.save(state, tmp)
    return directory


def load_train_state(directory: str | Path) -> dict[str, Any]:
    """The train state (weights under ``model``), with the model config under ``model_config``."""
    directory = Path(directory)
    path = directory / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises various types
        raise FlameError(f"{path}: unreadable train state ({exc})") from None
    if not isinstance(state, dict) or state.get("format_version") != STATE_FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else None
        raise FlameError(f"{path}: not a train state this flame can resume (format_version {found!r}, "
                         f"{STATE_FORMAT_VERSION} expected); train into another --out")
    check_finite(state["model"], path)
    state["model_config"] = read_model_config(directory)
    return state


# ---- logs --------------------------------------------------------------------------------


def write_summary(directory: str | Path, summary: dict[str, Any]) -> Path:
    path = Path(directory) / SUMMARY_FILE
    write_json(path, summary)
    return path


def read_summary(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / SUMMARY_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FlameError(f"{path} is missing: the training in {directory} has not finished") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FlameError(f"{path}: invalid JSON ({exc})") from None
