"""The MLflow tracking store: is it there, a client for it, and the names MLflow accepts.

``connect`` is the one way in: it checks the store first, so nothing starts (a training, a
registration) against a store it cannot write to, and a command that only reads
(``must_exist``) never creates an empty store as a side effect.
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
from flame.paths import NAMED_STORES, SQLITE_PREFIX, normalize_tracking_uri

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
    path = local_store(uri)
    if path is None:
        return
    if scheme == "sqlite":
        _check_writable_dir(path.parent, uri)
    elif path.exists() and not path.is_dir():
        raise FlameError(f"MLflow tracking store {uri}: {path} is a file, not a store folder "
                         f"(a SQLite database is {SQLITE_PREFIX}{path}, or a path ending in .db)")
    else:
        _check_writable_dir(path if path.exists() else path.parent, uri)


def local_store(uri: str) -> Path | None:
    """Where a local store lives: the SQLite file of ``sqlite:///...``, the folder of a
    ``file:`` URI or plain path; None for a server, an in-memory or another database."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme == "sqlite":
        db = uri[len(SQLITE_PREFIX):].partition("?")[0] if uri.startswith(SQLITE_PREFIX) else ""
        return Path(db).expanduser().resolve() if db and db != ":memory:" else None
    if scheme == "file":
        return Path(parsed.netloc + parsed.path).expanduser().resolve()
    if scheme == "" and uri not in NAMED_STORES:
        return Path(uri).expanduser().resolve()
    return None


def require_store(uri: str, source: str = "tracking URI") -> None:
    """Raise ``FlameError`` when the local store ``uri`` does not exist yet (``source``: where
    the URI came from, for the message): reading it must not create an empty one."""
    path = local_store(uri)
    if path is not None and not path.exists():
        raise FlameError(f"no MLflow store at {path} ({source} {uri}); nothing has been tracked yet")


def _check_writable_dir(folder: Path, uri: str) -> None:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise FlameError(f"MLflow tracking store {uri} is not writable: folder {probe} cannot be written")


def connect(config: FlameConfig, tracking_uri: str | None = None, must_exist: bool = False):
    """An ``MlflowClient`` for ``tracking_uri`` (default ``tracking.tracking_uri``), tracking and
    registry alike; raises ``FlameError`` naming the store when it cannot be used, or, with
    ``must_exist`` (for what only reads the store), when a local store does not exist yet.

    ``load_config`` has made the configuration's URI absolute; one given here and still
    relative is taken relative to the current folder, as a flag is."""
    from mlflow import MlflowClient

    uri = normalize_tracking_uri(tracking_uri or config.tracking.tracking_uri, Path.cwd())
    if must_exist:
        require_store(uri, "tracking URI" if tracking_uri else "tracking.tracking_uri")
    check_tracking_uri(uri, config.tracking.connect_timeout)
    check_shared_artifacts(uri, config.tracking.artifact_location)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# Database backends a tracking URI may name directly (SQLite aside: a local file, not shared).
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")


def check_shared_artifacts(uri: str, artifact_location: str | None) -> None:
    """Refuse a direct database tracking URI whose artifacts would stay on this machine: runs in
    a shared database with their files in each process's ``./mlruns`` are half visible anywhere
    else. Such a URI also names its driver: SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3."""
    scheme = urlparse(uri).scheme.lower()
    dialect, _, driver = scheme.partition("+")
    if dialect not in DATABASE_SCHEMES:
        return
    if not driver:
        raise FlameError(f"MLflow tracking URI {redact(uri)}: name the database driver, e.g. "
                         f"{dialect}+psycopg2://... (SQLAlchemy 2.1 maps a bare {dialect}:// to another driver)")
    if not artifact_location or "://" not in artifact_location or artifact_location.startswith("file:"):
        raise FlameError(
            f"MLflow tracking URI {redact(uri)} is a database shared by every machine, but the artifacts (models, "
            f"plots) would stay on each machine's disk ({artifact_location or './mlruns'}): run an MLflow server "
            "(mlflow server --backend-store-uri ... --artifacts-destination s3://bucket/prefix) and set "
            "tracking.tracking_uri to its http:// URL, or set tracking.artifact_location to s3://bucket/prefix")


def redact(uri: str) -> str:
    """``uri`` without its password."""
    parsed = urlparse(uri)
    if parsed.password:
        return uri.replace(f":{parsed.password}@", ":***@", 1)
    return uri


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


# Artifacts of experiments in a SQLite store: in this folder beside the database.
ARTIFACTS_FOLDER = "mlartifacts"


def artifact_location(tracking_uri: str, experiment: str, root: str | None = None) -> str | None:
    """Where a new experiment keeps its artifacts: ``root/<name>`` when ``root`` is set
    (``tracking.artifact_location``); for a SQLite store, ``mlartifacts/<name>`` beside the
    database (MLflow's default would be ``./mlruns`` of the current folder). None (the store's
    own default) for servers and file stores."""
    safe_name = re.sub(r"[^\w.\-]", "_", experiment)
    if root:
        return f"{root.rstrip('/')}/{safe_name}"
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    db = local_store(tracking_uri)
    if db is None:
        return None
    return (db.parent / ARTIFACTS_FOLDER / safe_name).as_uri()


def get_or_create_experiment(client, name: str, artifact_root: str | None = None) -> str:
    """The id of experiment ``name``, created if missing (its artifacts beside a SQLite
    store, see ``artifact_location``); safe when two processes race."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, name, artifact_root))
    except MlflowException:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
