"""Training checkpoints: the model (safetensors + JSON, see flame.model) plus
``train_state.pt`` (optimizer, scheduler, counters, RNG), loadable with
``torch.load(weights_only=True)``. Every file is written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from flame.atomic import atomic_path
from flame.errors import FlameError
from flame.model.flame_model import CONFIG_FILE, WEIGHTS_FILE, FlameModel

STATE_FILE = "train_state.pt"
STATE_VERSION = 1


def has_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / STATE_FILE).is_file()


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, model: FlameModel, train_state: dict[str, Any]) -> Path:
    """Model files first, then the train state that names the same step."""
    directory = Path(directory)
    counters = {"trained_steps": train_state["step"], "trained_epochs": train_state["epoch"]}
    model.save(directory, extra={**counters, "embedding_store": train_state.get("store_fingerprint")})
    state = {"format_version": STATE_VERSION, **train_state, "rng": rng_state()}
    with atomic_path(directory / STATE_FILE, suffix=".pt") as tmp:
        torch.save(state, tmp)
    return directory


def load_train_state(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises various types
        raise FlameError(f"{path}: unreadable train state ({exc})") from None
    if not isinstance(state, dict) or state.get("format_version") != STATE_VERSION:
        raise FlameError(f"{path}: not a FLAME train state (format_version {STATE_VERSION} expected)")
    try:
        model_cfg = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise FlameError(f"{directory / CONFIG_FILE}: unreadable ({exc})") from None
    if model_cfg.get("trained_steps") != state["step"]:
        raise FlameError(
            f"{directory}: {WEIGHTS_FILE} is at step {model_cfg.get('trained_steps')} but {STATE_FILE} at step "
            f"{state['step']} (a save was interrupted); start again without --resume or in another --out"
        )
    state["model_config"] = model_cfg
    return state


def load_model_weights(directory: str | Path, model: FlameModel) -> None:
    state = load_file(str(Path(directory) / WEIGHTS_FILE))
    model.load_state_dict(state, strict=True)
