"""The model registry side of the promotion gate: versions, the ``challenger`` and
``champion`` aliases, recorded decisions, manual promotion and rollback. Scoring lives in
``evaluations.promotion``; nothing here evaluates a model.

Registry writes that decide (move ``champion``, record a decision) run under a lock that is
itself a registry entry: creating a registered model is atomic in every MLflow store, so two
processes deciding at once, even on different machines, never interleave.

Every change of ``champion`` made here appends to the registered model's tag
``flame.champion_history``; rollback reconciles that history with the alias as it is, so
an alias moved by hand in the MLflow UI still rolls back to the version before it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flame.config import FlameConfig
from flame.errors import FlameError
from flame.mlflow.pyfunc import CHECKPOINT_ARTIFACT
from flame.mlflow.store import connect, using_tracking_uri

CHALLENGER = "challenger"
CHAMPION = "champion"
LOCK_STALE_S = 120.0
HISTORY_KEPT = 500

# Version tags.
TAG_TRAINING_ID = "flame.training_id"
TAG_PROFILE = "flame.profile"
TAG_DECISION = "flame.decision"
TAG_REASON = "flame.reason"
TAG_GATE_METRIC = "flame.gate_metric"
TAG_CHALLENGER_SCORE = "flame.challenger_score"
TAG_CHAMPION_SCORE = "flame.champion_score"
TAG_CHAMPION_VERSION = "flame.champion_version"
TAG_DIFF = "flame.diff"
TAG_CI_LOW = "flame.ci_low"
TAG_CI_HIGH = "flame.ci_high"
TAG_CONFIDENCE = "flame.confidence"
TAG_BOOTSTRAP_SAMPLES = "flame.bootstrap_samples"
TAG_N_QUERIES = "flame.n_queries"
TAG_EVAL_SET = "flame.eval_set"
TAG_MARGIN = "flame.margin"
TAG_SCORE_PREFIX = "flame.score."
# Registered-model tag: JSON list of the versions that held champion, oldest first.
TAG_CHAMPION_HISTORY = "flame.champion_history"


def score_tag(eval_set: str) -> str:
    """The version tag holding a version's score on the eval set with this fingerprint."""
    return TAG_SCORE_PREFIX + eval_set[:12]


@dataclass
class Decision:
    model_name: str
    version: str
    promoted: bool
    # first-version | promoted | rejected | manual | already-champion | already-registered
    decision: str
    reason: str
    gate_metric: str
    candidate_value: float | None = None  # the challenger's score
    champion_version: str | None = None
    champion_value: float | None = None  # the champion's score, on the same eval set
    diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    bootstrap_samples: int | None = None
    n_queries: int | None = None
    eval_set: str | None = None  # the eval set's fingerprint (evaluations.paired)
    margin: float | None = None
    aliases: list[str] | None = None  # the version's aliases once decided (not a tag)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tags(self) -> dict[str, str]:
        """The version tags recording this decision (fields left None are not written)."""
        fields = {
            TAG_DECISION: self.decision, TAG_REASON: self.reason, TAG_GATE_METRIC: self.gate_metric,
            TAG_CHALLENGER_SCORE: self.candidate_value, TAG_CHAMPION_VERSION: self.champion_version,
            TAG_CHAMPION_SCORE: self.champion_value, TAG_DIFF: self.diff, TAG_CI_LOW: self.ci_low,
            TAG_CI_HIGH: self.ci_high, TAG_CONFIDENCE: self.confidence,
            TAG_BOOTSTRAP_SAMPLES: self.bootstrap_samples, TAG_N_QUERIES: self.n_queries,
            TAG_EVAL_SET: self.eval_set, TAG_MARGIN: self.margin,
        }
        return {k: str(v) for k, v in fields.items() if v is not None}


def _is_code(exc: Exception, *codes: str) -> bool:
    return getattr(exc, "error_code", None) in codes


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="FLAME models; aliases champion/challenger set by the gate")
    except MlflowException as exc:
        if not _is_code(exc, "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


class _GateLock:
    """Mutual exclusion across processes via a uniquely named registered model."""

    def __init__(self, client, name: str, timeout: float = LOCK_STALE_S + 60):
        self.client, self.name, self.timeout = client, f"{name}.gate-lock", timeout

    def __enter__(self):
        from mlflow.exceptions import MlflowException

        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.client.create_registered_model(
                    self.name, description="held by `flame registry` while it decides a promotion; "
                    f"safe to delete when older than {LOCK_STALE_S:.0f}s")
                return self
            except MlflowException as exc:
                if not _is_code(exc, "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
            self._break_if_stale()
            if time.monotonic() > deadline:
                raise FlameError(f"registry lock {self.name!r} still held after {self.timeout:.0f}s")
            time.sleep(0.2)

    def _break_if_stale(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            lock = self.client.get_registered_model(self.name)
        except MlflowException:
            return
        if time.time() - lock.creation_timestamp / 1000 > LOCK_STALE_S:
            self._release()

    def _release(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model(self.name)
        except MlflowException:
            pass

    def __exit__(self, *exc) -> None:
        self._release()


def _version_by_alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _alias_version(client, name: str, alias: str) -> str | None:
    mv = _version_by_alias(client, name, alias)
    return None if mv is None else str(mv.version)


def _get_version(client, name: str, version: str | int):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise FlameError(f"registered model {name!r} has no version {version}") from None


def _exists(client, name: str, version: str) -> bool:
    try:
        _get_version(client, name, version)
    except FlameError:
        return False
    return True


def _versions(client, name: str) -> list:
    return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


def _registered_version(client, name: str, training_id: str):
    for mv in _versions(client, name):
        if mv.tags.get(TAG_TRAINING_ID) == training_id:
            return mv
    return None


def _aliases_of(client, name: str, version: str) -> list[str]:
    return sorted(_get_version(client, name, version).aliases)


def model_id_of(model_uri: str) -> str | None:
    """The logged model id of a ``models:/m-<id>`` URI (MLflow 3), else None."""
    prefix = "models:/"
    if model_uri.startswith(prefix):
        rest = model_uri[len(prefix):].strip("/")
        if rest.startswith("m-") and "/" not in rest:
            return rest
    return None


def alias_version(config: FlameConfig, alias: str, tracking_uri: str | None = None) -> str | None:
    """The version that holds ``alias`` (``champion``, ``challenger``), or None."""
    return _alias_version(connect(config, tracking_uri), config.registry.model_name, alias)


def registered_version(config: FlameConfig, training_id: str, tracking_uri: str | None = None):
    """The ``ModelVersion`` registered from training ``training_id`` (tag ``flame.training_id``), or None."""
    from mlflow.exceptions import MlflowException

    client = connect(config, tracking_uri)
    try:
        return _registered_version(client, config.registry.model_name, training_id)
    except MlflowException:
        return None  # no registered model yet


def version_aliases(config: FlameConfig, version: str, tracking_uri: str | None = None) -> list[str]:
    """The aliases ``version`` holds now, sorted."""
    return _aliases_of(connect(config, tracking_uri), config.registry.model_name, version)


def register_version(
    config: FlameConfig,
    model_uri: str,
    *,
    run_id: str | None = None,
    training_id: str | None = None,
    tracking_uri: str | None = None,
) -> tuple[str, bool]:
    """Register ``model_uri`` as a new version with alias ``challenger``: (version, True).

    When a version already carries ``training_id``, registers nothing: (that version, False).
    """
    uri = tracking_uri or config.tracking.tracking_uri
    client = connect(config, uri)
    name = config.registry.model_name
    _ensure_registered_model(client, name)
    tags = {TAG_PROFILE: config.profile}
    if training_id is not None:
        tags[TAG_TRAINING_ID] = training_id
    with _GateLock(client, name):
        if training_id is not None:
            existing = _registered_version(client, name, training_id)
            if existing is not None:
                return str(existing.version), False
        with using_tracking_uri(uri):  # the registry resolves models:/ sources through the global URI
            mv = client.create_model_version(name, source=model_uri, run_id=run_id, tags=tags,
                                             model_id=model_id_of(model_uri))
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
    return str(mv.version), True


def download_checkpoint(config: FlameConfig, version: str, dst: str | Path, tracking_uri: str | None = None) -> Path:
    """Download ``version`` of the registered model under ``dst``; the folder of its checkpoint.

    Raises ``FlameError`` naming the version when it cannot be downloaded or holds no checkpoint.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    uri = tracking_uri or config.tracking.tracking_uri
    source = f"models:/{config.registry.model_name}/{version}"
    try:
        with using_tracking_uri(uri):  # a models:/m-... source is resolved through the global URI
            root = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst),
                                                            tracking_uri=uri, registry_uri=uri))
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


def _history(client, name: str) -> list[str]:
    raw = client.get_registered_model(name).tags.get(TAG_CHAMPION_HISTORY)
    try:
        history = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        history = []  # hand-edited into something else: start over from the alias
    return [str(v) for v in history] if isinstance(history, list) else []


def _reconciled_history(client, name: str) -> list[str]:
    """The champion history ending with the version that holds the alias now (a hand move counts)."""
    history = _history(client, name)
    current = _alias_version(client, name, CHAMPION)
    if current is not None and (not history or history[-1] != current):
        history.append(current)
    return history


def _write_history(client, name: str, history: list[str]) -> None:
    client.set_registered_model_tag(name, TAG_CHAMPION_HISTORY, json.dumps(history[-HISTORY_KEPT:]))


def _set_champion(client, name: str, version: str) -> None:
    history = _reconciled_history(client, name)
    if not history or history[-1] != version:
        history.append(version)
    client.set_registered_model_alias(name, CHAMPION, version)
    _write_history(client, name, history)


def _record(client, name: str, d: Decision) -> None:
    for key, value in d.tags().items():
        client.set_model_version_tag(name, d.version, key, value)
    client.update_model_version(name, d.version, description=d.reason)


def record_decision(
    config: FlameConfig,
    decision: Decision,
    *,
    expected_champion: str | None,
    scores: dict[str, float] | None = None,
    tracking_uri: str | None = None,
) -> bool:
    """Record ``decision`` on its version (tags and description) and, when promoted, make it
    champion; ``scores`` (version -> score on ``decision.eval_set``) become each version's
    ``flame.score.<fingerprint>`` tag.

    Only while ``champion`` is still ``expected_champion`` (the version the decision was
    scored against); otherwise nothing is written and False is returned, to score again.
    """
    client = connect(config, tracking_uri)
    name = config.registry.model_name
    with _GateLock(client, name):
        if _alias_version(client, name, CHAMPION) != expected_champion:
            return False
        if decision.eval_set:
            for version, score in (scores or {}).items():
                client.set_model_version_tag(name, version, score_tag(decision.eval_set), str(score))
        _record(client, name, decision)
        if decision.promoted:
            _set_champion(client, name, decision.version)
    return True


def promote(config: FlameConfig, version: str | int, tracking_uri: str | None = None) -> Decision:
    """Make ``version`` the champion regardless of the gate (a manual decision, recorded as such).
    Gating the challenger is ``flame.app.promotion.gate_challenger``."""
    client = connect(config, tracking_uri, must_exist=True)
    name = config.registry.model_name
    mv = _get_version(client, name, version)
    with _GateLock(client, name):
        previous = _alias_version(client, name, CHAMPION)
        d = Decision(name, str(mv.version), True, "manual", f"promoted manually to {CHAMPION} (was v{previous})",
                     config.registry.gate_metric, champion_version=previous)
        _set_champion(client, name, d.version)
        _record(client, name, d)
        d.aliases = _aliases_of(client, name, d.version)
    return d


def rollback(config: FlameConfig, tracking_uri: str | None = None) -> dict[str, Any]:
    """Move ``champion`` back to the previous distinct, still existing version of the champion
    history (as reconciled with the alias: one moved by hand counts as a change)."""
    client = connect(config, tracking_uri, must_exist=True)
    name = config.registry.model_name
    with _GateLock(client, name):
        current = _alias_version(client, name, CHAMPION)
        if current is None:
            raise FlameError(f"registered model {name!r} has no {CHAMPION!r} to roll back")
        history = _reconciled_history(client, name)
        while history and (history[-1] == current or not _exists(client, name, history[-1])):
            history.pop()
        if not history:
            raise FlameError(f"{name!r} champion v{current} has no previous champion to roll back to")
        target = history[-1]
        client.set_registered_model_alias(name, CHAMPION, target)
        _write_history(client, name, history)
        reason = f"rolled back: {CHAMPION} returned from v{current} to v{target}"
        client.set_model_version_tag(name, current, TAG_DECISION, "rolled-back")
        client.set_model_version_tag(name, current, TAG_REASON, reason)
        client.update_model_version(name, current, description=reason)
    return {"model_name": name, "from_version": current, "to_version": target}


def show(config: FlameConfig, tracking_uri: str | None = None) -> dict[str, Any]:
    """The registered model's aliases, champion history and versions with their gate records."""
    from mlflow.exceptions import MlflowException

    client = connect(config, tracking_uri, must_exist=True)  # showing must not create a store
    uri = client.tracking_uri
    name = config.registry.model_name
    try:
        rm = client.get_registered_model(name)
    except MlflowException:
        raise FlameError(f"no registered model {name!r} at {uri}") from None
    aliases = {alias: str(v) for alias, v in rm.aliases.items()}
    out_versions = []
    for mv in _versions(client, name):
        tags = {k: v for k, v in mv.tags.items() if k.startswith("flame.")}
        out_versions.append({
            "version": str(mv.version),
            "aliases": sorted(a for a, v in aliases.items() if v == str(mv.version)),
            "decision": tags.get(TAG_DECISION),
            "run_id": mv.run_id,
            "source": mv.source,
            "description": mv.description,
            "tags": tags,
        })
    return {
        "model_name": name,
        "aliases": aliases,
        "gate_metric": config.registry.gate_metric,
        "champion_history": _history(client, name),
        "versions": out_versions,
    }
