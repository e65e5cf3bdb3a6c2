"""MLflow behind the ``flame.tracking.Tracker`` interface.

One experiment per profile (``tracking.experiment`` or ``flame-<profile>``), one run per
training. The tracking server is checked before the run starts, so a training never
begins against a store it cannot log to.
"""

from __future__ import annotations

import math
import os
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from flame.config import FlameConfig
from flame.errors import FlameError

_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")
_BATCH = 100  # MLflow's per-request limit on params (and a sane one for metrics and tags)


def mlflow_metric_name(name: str) -> str:
    """``name`` with the characters MLflow refuses replaced (``recall@5`` -> ``recall_at_5``)."""
    return _BAD_NAME_CHARS.sub("_", name.replace("@", "_at_"))


def experiment_name(config: FlameConfig) -> str:
    return config.tracking.experiment or f"flame-{config.profile}"


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Raise ``FlameError`` naming ``uri`` unless the tracking store can be reached/written."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=timeout) as resp:
                if resp.status != 200:
                    raise FlameError(f"MLflow tracking server {uri} is not healthy: GET {health} -> HTTP {resp.status}")
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FlameError(
                f"MLflow tracking server {uri} is not reachable ({reason}); start it "
                f"(mlflow server) or set tracking.tracking_uri in params.yaml"
            ) from None
        return
    if scheme == "sqlite":
        # sqlite:///relative.db and sqlite:////absolute.db
        db = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if db and db != ":memory:":
            _check_writable_dir(Path(db).expanduser().resolve().parent, uri)
        return
    if scheme in ("", "file"):
        path = Path(parsed.path if scheme == "file" else uri).expanduser().resolve()
        _check_writable_dir(path if path.exists() else path.parent, uri)


def _check_writable_dir(folder: Path, uri: str) -> None:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not _writable(probe):
        raise FlameError(f"MLflow tracking store {uri} is not writable: folder {probe} cannot be written")


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def get_or_create_experiment(client, name: str) -> str:
    """The id of experiment ``name``, created if missing; safe when two processes race."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


class MlflowTracker:
    """A ``Tracker`` logging to one MLflow run.

    ``run_id`` continues an existing run (a resumed training); otherwise a new run is
    created in the profile's experiment and every configuration value is logged.
    """

    def __init__(
        self,
        config: FlameConfig,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        tracking_uri: str | None = None,
        run_id: str | None = None,
    ):
        from mlflow import MlflowClient

        self.config = config
        self.tracking_uri = tracking_uri or config.tracking.tracking_uri
        check_tracking_uri(self.tracking_uri, config.tracking.connect_timeout)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self._closed = False
        if run_id:
            run = self.client.get_run(run_id)
            self.run_id = run.info.run_id
            self.experiment_id = run.info.experiment_id
            if run.info.status != "RUNNING":
                self.client.update_run(self.run_id, status="RUNNING")
            if tags:
                self.set_tags(tags)
            return
        self.experiment_id = get_or_create_experiment(self.client, experiment_name(config))
        base_tags = {"flame.profile": config.profile}
        base_tags.update(tags or {})
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=base_tags)
        self.run_id = run.info.run_id
        self.log_params(config.to_flat_dict())

    # -- Tracker interface --------------------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        """Log new params; MLflow refuses to change a logged value, so a value that differs
        (a resumed training with an override) is recorded as tag ``flame.param_changed.<key>``."""
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params
        new = {k: _param_value(v) for k, v in params.items()}
        items = [Param(k, v) for k, v in new.items() if k not in logged]
        changed = {f"flame.param_changed.{k}": v for k, v in new.items() if k in logged and logged[k] != v}
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])
        if changed:
            self.set_tags(changed)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # strings and lists are not metrics; they belong in params/tags
            if not math.isfinite(float(value)):
                continue
            items.append(Metric(mlflow_metric_name(key), float(value), now, step or 0))
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():
            raise FlameError(f"cannot log artifact {path}: it does not exist")
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + _BATCH])

    def close(self, status: str = "FINISHED") -> None:
        if not self._closed:
            self.client.set_terminated(self.run_id, status)
            self._closed = True

    # -- extras ---------------------------------------------------------------------------

    def log_evaluation(self, summary: dict[str, Any], files: list[str | Path] = ()) -> None:
        """Log an evaluation's flat ``{benchmark}/{metric}`` summary and its files (JSON, plots)."""
        self.log_metrics(summary)
        for f in files:
            self.log_artifact(f, "evaluation")

    def log_model(self, checkpoint_dir: str | Path, name: str = "model") -> str:
        """Log a checkpoint folder as this run's pyfunc model; returns its ``models:/`` URI."""
        from flame.mlflow_model import log_flame_model

        return log_flame_model(self.config, checkpoint_dir, self.run_id, name=name, tracking_uri=self.tracking_uri)

    def metrics(self) -> dict[str, float]:
        """The run's latest metric values (MLflow names)."""
        return dict(self.client.get_run(self.run_id).data.metrics)

    def __enter__(self) -> "MlflowTracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("FINISHED")
        else:
            self.close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")


def tracker_from_config(config: FlameConfig, **kwargs) -> MlflowTracker:
    """The MLflow tracker of ``config`` (raises ``FlameError`` when the store is unreachable)."""
    return MlflowTracker(config, **kwargs)
