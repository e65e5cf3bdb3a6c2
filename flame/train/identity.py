"""One training identity: what makes two trainings the same training.

A training is its weight-changing configuration (``identity_config``), the bytes of every
shard it reads (``data_digests``), the text encoder it trains against (``text_fingerprint``)
and where its texts come from (``source_fingerprint``: the embedding store, or the CLIP
baseline's caption field). Its ``id`` names the training's folder; a resume and a retrain
compare identities. The settings of ``NON_WEIGHT_SETTINGS`` change no weight and are left
out, so they may change between runs of the same training: ``--epochs`` extends a run
(the LR horizon is kept, see ``flame.train.run_training``), logging and checkpoint cadence,
the device and when NaN/Inf is looked for (a training may resume on another machine), the
LLM's batch size (of ``flame embed``), its cache folder and where the embedding ran (its Ray
workers and cluster).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from flame.config import FlameConfig, flatten
from flame.digest import config_digest
from flame.errors import FlameError

NON_WEIGHT_SETTINGS: dict[str, tuple[str, ...]] = {
    "train": ("epochs", "log_every_steps", "checkpoint_every_steps", "device", "nonfinite_check"),
    "text": ("batch_size", "cache_dir", "distributor", "cluster_address", "workers", "worker_cpus", "worker_gpus",
             "worker_retries"),
}
ID_HEX = 12

# The train state's key of each field (the keys train states have always recorded), and what
# messages call it.
_RECORD_KEYS = {"config": "training_config", "data_digests": "data_digests",
                "text_fingerprint": "text_fingerprint", "source_fingerprint": "store_fingerprint"}
_NAMES = {"config": "configuration", "data_digests": "data", "text_fingerprint": "text encoder fingerprint",
          "source_fingerprint": "embedding store fingerprint"}


def identity_config(config: FlameConfig) -> dict[str, Any]:
    """The configuration that makes a training: the image, train and text sections, of the text
    side only what its mode reads (the LLM and prompts, or the CLIP baseline's text tower),
    without ``NON_WEIGHT_SETTINGS``."""
    dumped = config.model_dump(mode="json")
    if config.text.mode == "clip":
        sections = {"text": {"mode": "clip"}, "clip_text": dumped["clip_text"]}
    else:
        sections = {"text": dumped["text"]}
    sections.update(image=dumped["image"], train=dumped["train"])
    for name, keys in NON_WEIGHT_SETTINGS.items():
        for key in keys:
            sections[name].pop(key, None)
    return sections


@dataclass(frozen=True)
class TrainingIdentity:
    config: dict[str, Any]
    data_digests: dict[str, str]  # shard name -> sha256 of its tar
    text_fingerprint: str
    source_fingerprint: str

    @property
    def id(self) -> str:
        """12 hex digits: the same training has the same id, wherever and whoever runs it."""
        return config_digest(asdict(self), ID_HEX)

    def record(self) -> dict[str, Any]:
        """What a train state records of it."""
        return {_RECORD_KEYS[name]: value for name, value in asdict(self).items()}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "TrainingIdentity":
        for name, key in _RECORD_KEYS.items():
            if record.get(key) is None:
                raise FlameError(f"the train state does not record the {_NAMES[name]} it was trained on "
                                 "(made by an older flame)")
        return cls(**{name: record[key] for name, key in _RECORD_KEYS.items()})

    def changes_since(self, recorded: "TrainingIdentity") -> list[str]:
        """What differs from the ``recorded`` identity, one sentence per field; empty: the same training."""
        changes = []
        for name, why in (("text_fingerprint", "; its text embeddings are not comparable"), ("source_fingerprint", "")):
            if getattr(recorded, name) != getattr(self, name):
                changes.append(f"it was trained against {_NAMES[name]} {getattr(recorded, name)}, "
                               f"but this run has {getattr(self, name)}{why}")
        for name, diff in (("data_digests", _data_changes), ("config", _config_changes)):
            if found := diff(getattr(recorded, name), getattr(self, name)):
                changes.append(f"the {_NAMES[name]} changed since it was trained: {'; '.join(found)}")
        return changes


def training_identity(config: FlameConfig, data_digests: dict[str, str], text_fingerprint: str,
                      source_fingerprint: str) -> TrainingIdentity:
    return TrainingIdentity(identity_config(config), dict(data_digests), text_fingerprint, source_fingerprint)


def _config_changes(before: dict, now: dict) -> list[str]:
    """``section.key: old -> new`` for every setting that differs."""
    old, new = flatten(before), flatten(now)
    return [f"{key}: {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}"
            for key in sorted(set(old) | set(new)) if key not in old or key not in new or old[key] != new[key]]


def _data_changes(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """Shards added, removed or changed (by sha256) since ``before``."""
    changes = [f"{name} added" for name in sorted(set(now) - set(before))]
    changes += [f"{name} removed" for name in sorted(set(before) - set(now))]
    changes += [f"{name} changed (sha256 {before[name][:12]}... -> {now[name][:12]}...)"
                for name in sorted(set(now) & set(before)) if before[name] != now[name]]
    return changes
