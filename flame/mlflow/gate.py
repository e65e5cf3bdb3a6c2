"""The model registry gate: every new version is the ``challenger``; it becomes the
``champion`` only when it beats the current champion on ``registry.gate_metric`` by
``registry.margin``. Decisions and both numbers are recorded on the version.

Gate decisions (read champion, compare, move the alias) run under a lock that is itself
a registry entry: creating a registered model is atomic in every MLflow store, so two
processes registering at once, even on different machines, never interleave a decision.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from flame.config import FlameConfig
from flame.errors import FlameError
from flame.mlflow.store import connect, metric_name, using_tracking_uri

CHALLENGER = "challenger"
CHAMPION = "champion"
TAG_GATE_METRIC = "flame.gate_metric"
TAG_GATE_VALUE = "flame.gate_value"
TAG_CHAMPION_VALUE = "flame.champion_value"
TAG_CHAMPION_VERSION = "flame.champion_version"
TAG_DECISION = "flame.decision"
TAG_PREVIOUS = "flame.previous_champion"
LOCK_STALE_S = 120.0


@dataclass
class Decision:
    model_name: str
    version: str
    promoted: bool
    decision: str  # first-version | promoted | rejected | manual | already-champion
    reason: str
    gate_metric: str
    candidate_value: float | None
    champion_version: str | None
    champion_value: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def gate_value(client, version, gate_metric: str) -> float | None:
    """The gate metric of a model version: its recorded tag, else its run's metric."""
    tagged = version.tags.get(TAG_GATE_VALUE)
    if tagged not in (None, "", "None"):
        return float(tagged)
    if version.run_id:
        metrics = client.get_run(version.run_id).data.metrics
        value = metrics.get(metric_name(gate_metric))
        return None if value is None else float(value)
    return None


def beats(candidate: float, champion: float, margin: float, higher_is_better: bool) -> bool:
    return candidate > champion + margin if higher_is_better else candidate < champion - margin


def _record(client, name: str, d: Decision) -> None:
    tags = {
        TAG_GATE_METRIC: d.gate_metric,
        TAG_GATE_VALUE: str(d.candidate_value),
        TAG_CHAMPION_VALUE: str(d.champion_value),
        TAG_CHAMPION_VERSION: str(d.champion_version),
        TAG_DECISION: d.decision,
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, d.version, k, v)
    client.update_model_version(name, d.version, description=d.reason)


def _set_champion(client, name: str, version: str, previous: str | None) -> None:
    if previous is not None:
        client.set_model_version_tag(name, version, TAG_PREVIOUS, previous)
    client.set_registered_model_alias(name, CHAMPION, version)


def _gate(client, config: FlameConfig, version: str, value: float | None) -> Decision:
    reg = config.registry
    name = reg.model_name
    with _GateLock(client, name):
        champ = _version_by_alias(client, name, CHAMPION)
        champ_version = champ.version if champ else None
        champ_value = gate_value(client, champ, reg.gate_metric) if champ else None
        d = Decision(name, str(version), False, "rejected", "", reg.gate_metric, value, champ_version, champ_value)
        direction = "higher" if reg.higher_is_better else "lower"
        if champ is None:
            d.promoted, d.decision = True, "first-version"
            d.reason = f"first version: champion by default ({reg.gate_metric}={value})"
        elif str(champ.version) == str(version):
            d.promoted, d.decision = True, "already-champion"
            d.reason = f"version {version} already is the champion"
        elif value is None:
            d.reason = f"not promoted: no value for gate metric {reg.gate_metric!r}"
        elif champ_value is None:
            d.promoted, d.decision = True, "promoted"
            d.reason = f"promoted: champion v{champ_version} has no {reg.gate_metric!r}; challenger has {value:.6g}"
        elif beats(value, champ_value, reg.margin, reg.higher_is_better):
            d.promoted, d.decision = True, "promoted"
            d.reason = (f"promoted: {reg.gate_metric} {value:.6g} beats champion v{champ_version} "
                        f"{champ_value:.6g} by more than margin {reg.margin} ({direction} is better)")
        else:
            d.reason = (f"not promoted: {reg.gate_metric} {value:.6g} does not beat champion v{champ_version} "
                        f"{champ_value:.6g} by margin {reg.margin} ({direction} is better)")
        if d.decision == "already-champion":
            return d  # keep the record of the decision that made it champion
        if d.promoted:
            _set_champion(client, name, d.version, champ_version)
        _record(client, name, d)
    return d


def _candidate_value(client, run_id: str | None, gate_metric: str, metrics: dict[str, float] | None) -> float | None:
    if metrics:
        for key in (gate_metric, metric_name(gate_metric)):
            if key in metrics and metrics[key] is not None:
                return float(metrics[key])
    if run_id:
        value = client.get_run(run_id).data.metrics.get(metric_name(gate_metric))
        return None if value is None else float(value)
    return None


def model_id_of(model_uri: str) -> str | None:
    """The logged model id of a ``models:/m-<id>`` URI (MLflow 3), else None."""
    prefix = "models:/"
    if model_uri.startswith(prefix):
        rest = model_uri[len(prefix):].strip("/")
        if rest.startswith("m-") and "/" not in rest:
            return rest
    return None


def register_model(
    config: FlameConfig,
    model_uri: str,
    run_id: str | None = None,
    metrics: dict[str, float] | None = None,
    tracking_uri: str | None = None,
) -> Decision:
    """Register ``model_uri`` as a new version (alias ``challenger``) and run the gate.

    The gate value comes from ``metrics`` (a flat evaluation summary) or the run's metrics.
    """
    uri = tracking_uri or config.tracking.tracking_uri
    client = connect(config, uri)
    reg = config.registry
    _ensure_registered_model(client, reg.model_name)
    value = _candidate_value(client, run_id, reg.gate_metric, metrics)
    with using_tracking_uri(uri):  # the registry resolves models:/ sources through the global URI
        mv = client.create_model_version(
            reg.model_name,
            source=model_uri,
            run_id=run_id,
            tags={TAG_GATE_METRIC: reg.gate_metric, TAG_GATE_VALUE: str(value), "flame.profile": config.profile},
            model_id=model_id_of(model_uri),
        )
    client.set_registered_model_alias(reg.model_name, CHALLENGER, mv.version)
    return _gate(client, config, mv.version, value)


def promote(config: FlameConfig, version: str | int | None = None) -> Decision:
    """Without ``version``: run the gate for the current challenger. With it: make that
    version the champion regardless of the gate (a manual decision, recorded as such)."""
    client = connect(config)
    reg = config.registry
    name = reg.model_name
    if version is None:
        challenger = _version_by_alias(client, name, CHALLENGER)
        if challenger is None:
            raise FlameError(f"registered model {name!r} has no {CHALLENGER!r} version to promote")
        return _gate(client, config, challenger.version, gate_value(client, challenger, reg.gate_metric))
    mv = _get_version(client, name, version)
    with _GateLock(client, name):
        champ = _version_by_alias(client, name, CHAMPION)
        value = gate_value(client, mv, reg.gate_metric)
        champ_value = gate_value(client, champ, reg.gate_metric) if champ else None
        d = Decision(name, str(mv.version), True, "manual", f"promoted manually to {CHAMPION} (was v{champ.version if champ else None})",
                     reg.gate_metric, value, champ.version if champ else None, champ_value)
        if champ is None or str(champ.version) != str(mv.version):
            _set_champion(client, name, d.version, champ.version if champ else None)
        _record(client, name, d)
    return d


def rollback(config: FlameConfig) -> dict[str, Any]:
    """Move ``champion`` back to the version it replaced (recorded when it was promoted)."""
    client = connect(config)
    name = config.registry.model_name
    with _GateLock(client, name):
        champ = _version_by_alias(client, name, CHAMPION)
        if champ is None:
            raise FlameError(f"registered model {name!r} has no {CHAMPION!r} to roll back")
        previous = champ.tags.get(TAG_PREVIOUS)
        if not previous or previous == "None":
            raise FlameError(f"{name!r} champion v{champ.version} has no previous champion to roll back to")
        _get_version(client, name, previous)
        client.set_registered_model_alias(name, CHAMPION, previous)
        client.set_model_version_tag(name, champ.version, TAG_DECISION, "rolled-back")
        client.update_model_version(name, champ.version, description=f"rolled back: {CHAMPION} returned to v{previous}")
    return {"model_name": name, "from_version": str(champ.version), "to_version": str(previous)}


def _get_version(client, name: str, version: str | int):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise FlameError(f"registered model {name!r} has no version {version}") from None


def show(config: FlameConfig) -> dict[str, Any]:
    """The registered model's aliases and versions with their gate records."""
    from mlflow.exceptions import MlflowException

    client = connect(config)
    name = config.registry.model_name
    try:
        rm = client.get_registered_model(name)
    except MlflowException:
        raise FlameError(f"no registered model {name!r} at {config.tracking.tracking_uri}") from None
    aliases = {alias: str(v) for alias, v in rm.aliases.items()}
    versions = client.search_model_versions(f"name='{name}'")
    out_versions = []
    for mv in sorted(versions, key=lambda v: int(v.version)):
        out_versions.append({
            "version": str(mv.version),
            "aliases": sorted(a for a, v in aliases.items() if v == str(mv.version)),
            "run_id": mv.run_id,
            "source": mv.source,
            "description": mv.description,
            "tags": {k: v for k, v in mv.tags.items() if k.startswith("flame.")},
        })
    return {
        "model_name": name,
        "aliases": aliases,
        "gate_metric": config.registry.gate_metric,
        "versions": out_versions,
    }
