"""The MLflow tracking store: is it there, a client for it, and the names MLflow accepts.

``connect`` is the one way in: it checks the store first, so nothing starts (a training, a
registration) against a store it cannot write to.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from flame.config import FlameConfig
from flame.errors import FlameError

_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")


def metric_name(name: str) -> str:
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
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise FlameError(f"MLflow tracking store {uri} is not writable: folder {probe} cannot be written")


def connect(config: FlameConfig, tracking_uri: str | None = None):
    """An ``MlflowClient`` for ``tracking_uri`` (default ``tracking.tracking_uri``), tracking and
    registry alike; raises ``FlameError`` naming the store when it cannot be used."""
    from mlflow import MlflowClient

    uri = tracking_uri or config.tracking.tracking_uri
    check_tracking_uri(uri, config.tracking.connect_timeout)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking URI at ``uri`` for the block. Some of MLflow's API reads
    only the global one (``mlflow.start_run``, resolving ``models:/`` sources in the registry);
    ``set_tracking_uri`` also exports ``$MLFLOW_TRACKING_URI``, which is put back exactly."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets the variable again


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
