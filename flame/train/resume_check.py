"""What a resumed training must match: the texts, the data and the configuration its
checkpoint was trained on. ``provenance`` is recorded in every train state; ``check_resumable``
compares it with the run about to continue and refuses, naming what changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flame.config import FlameConfig, flatten
from flame.data.plan import ShardPlan
from flame.errors import FlameError
from flame.text_modes.base import TrainingSide

# Settings a resume may change: --epochs extends a run (the LR horizon is kept, see
# run_training); logging and checkpoint cadence, the LLM's batch size (of `flame embed`) and
# its cache folder change no weight.
RESUME_MAY_CHANGE = {"train": ("epochs", "log_every_steps", "checkpoint_every_steps"),
                     "text": ("batch_size", "cache_dir")}


def training_config(config: FlameConfig) -> dict[str, Any]:
    """The configuration a resume must match: the image, train and text sections, of the text
    side only what its mode reads (the LLM and prompts, or the CLIP baseline's text tower)."""
    dumped = config.model_dump(mode="json")
    if config.text.mode == "clip":
        sections = {"text": {"mode": "clip"}, "clip_text": dumped["clip_text"]}
    else:
        sections = {"text": dumped["text"]}
    sections.update(image=dumped["image"], train=dumped["train"])
    for name, keys in RESUME_MAY_CHANGE.items():
        for key in keys:
            sections[name].pop(key, None)
    return sections


def provenance(config: FlameConfig, mode: TrainingSide, plan: ShardPlan) -> dict[str, Any]:
    """What the train state records of the inputs it was trained on."""
    return {
        "text_fingerprint": mode.text_fingerprint,
        "store_fingerprint": mode.source_fingerprint,
        "data_digests": plan.digests,
        "training_config": training_config(config),
    }


def config_changes(before: dict, now: dict) -> list[str]:
    """``section.key: old -> new`` for every setting that differs."""
    old, new = flatten(before), flatten(now)
    return [f"{key}: {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}"
            for key in sorted(set(old) | set(new)) if key not in old or key not in new or old[key] != new[key]]


def data_changes(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """Shards added, removed or changed (by sha256) since ``before``."""
    changes = [f"{name} added" for name in sorted(set(now) - set(before))]
    changes += [f"{name} removed" for name in sorted(set(before) - set(now))]
    changes += [f"{name} changed (sha256 {before[name][:12]}... -> {now[name][:12]}...)"
                for name in sorted(set(now) & set(before)) if before[name] != now[name]]
    return changes


def check_resumable(state: dict[str, Any], out_dir: Path, config: FlameConfig, mode: TrainingSide, plan: ShardPlan) -> None:
    """Raise ``FlameError`` unless the train state of ``out_dir`` was trained on what this run reads."""
    now = provenance(config, mode, plan)
    for what, key in (("text encoder fingerprint", "text_fingerprint"),
                      ("embedding store fingerprint", "store_fingerprint")):
        if state.get(key) != now[key]:
            raise FlameError(
                f"refusing to resume {out_dir}: it was trained against {what} {state.get(key)}, but "
                f"{mode.source} has {now[key]}; its text embeddings are not comparable. "
                "Train into another --out, or resume with the original embeddings"
            )
    for what, key, diff in (("data", "data_digests", data_changes),
                            ("configuration", "training_config", config_changes)):
        if state.get(key) is None:
            raise FlameError(
                f"refusing to resume {out_dir}: its train state does not record the {what} it was "
                "trained on (made by an older flame), so a resume cannot be checked; train into another --out"
            )
        changes = diff(state[key], now[key])
        if changes:
            raise FlameError(
                f"refusing to resume {out_dir}: the {what} changed since it was trained: "
                f"{'; '.join(changes)}. Train into another --out, or resume with the original {what}"
            )
