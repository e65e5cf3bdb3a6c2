"""The MLflow model registry of one registered model, opened once per command or asset.

``Registry.open(config)`` checks the store once and holds one client; its methods cover what
happens to a model after training: register a version (``challenger``), read the aliases,
move an alias by compare-and-set, the champion history, show, and download a version's
checkpoint. What a decision says and when to promote is ``flame.app.promotion``'s business;
nothing here evaluates a model or decides.

**Compare-and-set.** MLflow moves an alias unconditionally and has no transaction a client can
hold, so ``compare_and_set`` emulates one with a claim: it writes a registered-model tag naming
the move and a random token, waits ``CLAIM_SETTLE_S``, and moves the alias only if its token is
still the last one written and the alias still holds the expected version. Of two decisions
racing, the last to claim moves (the other finds its claim overwritten and returns False, so its
caller scores the new state); one that sees the alias already moved returns False too. The wait
must exceed the time between a winner's last check and its move (milliseconds). A claim left by
a killed process blocks nothing: the next claim overwrites it.

**One registration per training.** ``register`` with ``unique`` tags (the training id and its
trained steps) keeps the lowest version carrying them: a second version created by a racing
registration of the same training deletes itself and returns the first one.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from flame.config import FlameConfig
from flame.errors import FlameError
from flame.mlflow.pyfunc import CHECKPOINT_ARTIFACT
from flame.mlflow.store import connect, using_tracking_uri

CHALLENGER = "challenger"
CHAMPION = "champion"
# Registered-model tags: the versions that held champion (a JSON list, oldest first), and the
# claim of the alias move in progress (see compare_and_set).
TAG_CHAMPION_HISTORY = "flame.champion_history"
TAG_CLAIM = "flame.alias_claim"
HISTORY_KEPT = 500
# Lineage tags a version carries from its training run (see orchestration.versioning).
TAG_GIT_COMMIT = "git.commit"
DVC_TAG_PREFIX = "dvc."
CLAIM_SETTLE_S = 0.3


def _already_exists(exc: MlflowException) -> bool:
    return getattr(exc, "error_code", None) in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


def model_id_of(model_uri: str) -> str | None:
    """The logged model id of a ``models:/m-<id>`` URI (MLflow 3), else None."""
    prefix = "models:/"
    if model_uri.startswith(prefix):
        rest = model_uri[len(prefix):].strip("/")
        if rest.startswith("m-") and "/" not in rest:
            return rest
    return None


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as the registry shows it."""

    version: str
    aliases: list[str]
    run_id: str | None
    source: str
    description: str | None
    tags: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """With the lineage spelled out: the git commit the model was trained at and the DVC
        hashes of the data it was trained on (tags ``git.commit``, ``dvc.<path>``)."""
        return {"version": self.version, "aliases": self.aliases, "run_id": self.run_id, "source": self.source,
                "description": self.description, "git_commit": self.tags.get(TAG_GIT_COMMIT),
                "data_versions": {k[len(DVC_TAG_PREFIX):]: v for k, v in self.tags.items() if k.startswith(DVC_TAG_PREFIX)},
                "tags": self.tags}


class Registry:
    def __init__(self, client, model_name: str):
        self.client = client
        self.name = model_name
        self.tracking_uri = client.tracking_uri

    @classmethod
    def open(cls, config: FlameConfig, tracking_uri: str | None = None, must_exist: bool = False) -> "Registry":
        """The registry of ``registry.model_name`` in the store of ``tracking_uri`` (default the
        configuration's), checked once; ``must_exist``: for what only reads, never create a store."""
        return cls(connect(config, tracking_uri, must_exist=must_exist), config.registry.model_name)

    # ---- versions -------------------------------------------------------------------------

    def exists(self) -> bool:
        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            return False
        return True

    def version(self, number: str | int):
        try:
            return self.client.get_model_version(self.name, str(number))
        except MlflowException:
            raise FlameError(f"registered model {self.name!r} has no version {number}") from None

    def versions(self) -> list:
        if not self.exists():
            return []
        return sorted(self.client.search_model_versions(f"name='{self.name}'"), key=lambda v: int(v.version))

    def find(self, tags: dict[str, str]):
        """The lowest version whose tags include all of ``tags``, or None."""
        for mv in self.versions():
            if all(mv.tags.get(k) == v for k, v in tags.items()):
                return mv
        return None

    def register(self, model_uri: str, *, run_id: str | None = None, tags: dict[str, str] | None = None,
                 unique: dict[str, str] | None = None) -> tuple[str, bool]:
        """Register ``model_uri`` as a new version holding ``challenger``: (version, True). With
        ``unique`` tags that a version already carries: nothing new, (that version, False)."""
        if unique and (existing := self.find(unique)) is not None:
            return str(existing.version), False
        try:
            self.client.create_registered_model(self.name, description="FLAME models; aliases champion and "
                                                "challenger are set by the promotion gate")
        except MlflowException as exc:
            if not _already_exists(exc):
                raise
        with using_tracking_uri(self.tracking_uri):  # the registry resolves models:/ sources through the global URI
            mv = self.client.create_model_version(self.name, source=model_uri, run_id=run_id,
                                                  tags={**(tags or {}), **(unique or {})},
                                                  model_id=model_id_of(model_uri))
        version = str(mv.version)
        if unique and (first := str(self.find(unique).version)) != version:
            self.client.delete_model_version(self.name, version)  # a racing registration of the same training won
            return first, False
        self.client.set_registered_model_alias(self.name, CHALLENGER, version)
        return version, True

    def set_tags(self, version: str, tags: dict[str, str], description: str | None = None) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, str(value))
        if description is not None:
            self.client.update_model_version(self.name, version, description=description)

    # ---- aliases ----------------------------------------------------------------------------

    def aliases(self) -> dict[str, str]:
        """Alias -> version, as the registry holds them now."""
        if not self.exists():
            return {}
        return {alias: str(v) for alias, v in self.client.get_registered_model(self.name).aliases.items()}

    def alias(self, alias: str) -> str | None:
        return self.aliases().get(alias)

    def aliases_of(self, version: str) -> list[str]:
        return sorted(self.version(version).aliases)

    def compare_and_set(self, alias: str, expected: str | None, new: str, history: list[str] | None = None) -> bool:
        """Point ``alias`` at ``new`` only while it still holds ``expected`` (None: no version);
        False when it moved or a concurrent move claimed it later (see the module's note). A move
        of ``champion`` also writes the champion history: ``history`` when given (a rollback
        returning along it), else the reconciled history with ``new`` appended."""
        if self.alias(alias) != expected:
            return False
        if expected == new:
            return True  # nothing moves
        token = uuid.uuid4().hex
        claim = json.dumps({"alias": alias, "from": expected, "to": new, "token": token})
        self.client.set_registered_model_tag(self.name, TAG_CLAIM, claim)
        time.sleep(CLAIM_SETTLE_S)
        tags = self.client.get_registered_model(self.name).tags
        if json.loads(tags.get(TAG_CLAIM, "{}")).get("token") != token or self.alias(alias) != expected:
            return False
        if alias == CHAMPION and history is None:
            history = self.reconciled_history() + [new]
        self.client.set_registered_model_alias(self.name, alias, new)
        if alias == CHAMPION:
            self.client.set_registered_model_tag(self.name, TAG_CHAMPION_HISTORY, json.dumps(history[-HISTORY_KEPT:]))
        return True

    def record(self, version: str, tags: dict[str, str], description: str, *, champion_was: str | None,
               make_champion: bool = False, other_tags: dict[str, dict[str, str]] | None = None) -> list[str] | None:
        """Write ``tags`` and ``description`` on ``version`` (and ``other_tags`` on other versions),
        with ``make_champion`` moving ``champion`` to it, all only while ``champion`` still holds
        ``champion_was``: else nothing is written and None is returned. The version's aliases once written."""
        if make_champion:
            if not self.compare_and_set(CHAMPION, champion_was, version):
                return None
        elif self.alias(CHAMPION) != champion_was:
            return None
        for other, extra in (other_tags or {}).items():
            self.set_tags(other, extra)
        self.set_tags(version, tags, description)
        return self.aliases_of(version)

    def history(self) -> list[str]:
        """The versions that held ``champion``, oldest first, as recorded (see ``reconciled_history``)."""
        if not self.exists():
            return []
        raw = self.client.get_registered_model(self.name).tags.get(TAG_CHAMPION_HISTORY)
        try:
            history = json.loads(raw) if raw else []
        except json.JSONDecodeError:
            history = []  # hand-edited into something else: start over from the alias
        return [str(v) for v in history] if isinstance(history, list) else []

    def reconciled_history(self) -> list[str]:
        """The champion history ending with the version that holds the alias now (a hand move counts)."""
        history = self.history()
        current = self.alias(CHAMPION)
        if current is not None and (not history or history[-1] != current):
            history.append(current)
        return history

    # ---- reading ------------------------------------------------------------------------------

    def show(self) -> dict[str, Any]:
        """The aliases, the champion history and every version with its ``flame.``, ``git.`` and
        ``dvc.`` tags."""
        if not self.exists():
            raise FlameError(f"no registered model {self.name!r} at {self.tracking_uri}")
        aliases = self.aliases()
        versions = [VersionInfo(str(mv.version), sorted(a for a, v in aliases.items() if v == str(mv.version)),
                                mv.run_id, mv.source, mv.description,
                                {k: v for k, v in mv.tags.items() if k.startswith(("flame.", "git.", DVC_TAG_PREFIX))})
                    for mv in self.versions()]
        return {"model_name": self.name, "aliases": aliases, "champion_history": self.history(),
                "versions": [v.to_dict() for v in versions]}

    def download_checkpoint(self, version: str, dst: str | Path) -> Path:
        """Download ``version`` under ``dst``; the folder of its checkpoint. A ``FlameError``
        names the version when it cannot be downloaded or holds no checkpoint."""
        source = f"models:/{self.name}/{version}"
        try:
            with using_tracking_uri(self.tracking_uri):  # a models:/m-... source is resolved through the global URI
                root = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst),
                                                                tracking_uri=self.tracking_uri,
                                                                registry_uri=self.tracking_uri))
        except (MlflowException, OSError) as exc:
            raise FlameError(f"{source}: cannot download ({exc})") from None
        try:
            artifacts = Model.load(str(root)).flavors.get("python_function", {}).get("artifacts") or {}
        except (MlflowException, OSError) as exc:
            raise FlameError(f"{source}: not an MLflow model ({exc})") from None
        relative = (artifacts.get(CHECKPOINT_ARTIFACT) or {}).get("path")
        if not relative:
            raise FlameError(f"{source}: the model has no {CHECKPOINT_ARTIFACT!r} artifact "
                             f"(artifacts: {sorted(artifacts) or 'none'})")
        return root / relative
