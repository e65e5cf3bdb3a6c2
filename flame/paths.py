"""One way to read a path or an MLflow tracking URI: relative to a base folder.

The base is the folder of the params file for a value of the configuration, and the current
folder for what a user types in a shell (a flag, an environment variable).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

SQLITE_PREFIX = "sqlite:///"
# A plain path with one of these suffixes is a SQLite database, not a file store folder.
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
# Tracking URIs without "scheme://" that name no place on disk.
NAMED_STORES = ("databricks", "databricks-uc", "uc")


def is_url(value: str | os.PathLike) -> bool:
    """Whether ``value`` names an object store (``s3://...``, ``gs://...``), not a local path."""
    if getattr(value, "protocol", None) is not None:  # a UPath
        return value.protocol not in ("", "file", "local")
    if isinstance(value, Path):
        return False
    text = str(value)
    scheme = urlparse(text).scheme
    return "://" in text and len(scheme) > 1 and scheme != "file"


def resolve_path(path: str | Path, base: str | Path) -> str:
    """``path`` made absolute against ``base`` (``~`` expanded; an absolute path or an
    object-store URL is kept)."""
    if is_url(path):
        return str(path)
    expanded = Path(path).expanduser()
    if expanded.is_absolute():
        return str(expanded)
    return os.path.normpath(Path(base).expanduser().absolute() / expanded)


def normalize_tracking_uri(uri: str, base: str | Path) -> str:
    """``uri`` with a local store made absolute against ``base``.

    ``sqlite:///mlflow.db`` -> ``sqlite:////BASE/mlflow.db``; a plain path ending in ``.db``
    (``.sqlite``, ``.sqlite3``) -> that SQLite database; ``file:`` URIs and other plain paths
    (file stores) -> absolute. Servers (``http://``, ``postgresql://``, ``databricks``) are kept.
    """
    if uri.startswith(SQLITE_PREFIX):
        db, sep, query = uri[len(SQLITE_PREFIX):].partition("?")
        if db in ("", ":memory:"):
            return uri
        return SQLITE_PREFIX + resolve_path(db, base) + sep + query
    scheme = urlparse(uri).scheme
    if scheme == "file":
        rest = uri[len("file:"):]
        if rest.startswith("//"):
            rest = rest[2:]  # file:///abs keeps its leading "/", file://rel had none
        return "file://" + resolve_path(rest, base)
    if scheme or uri in NAMED_STORES:
        return uri
    path = resolve_path(uri, base)
    return SQLITE_PREFIX + path if path.endswith(SQLITE_SUFFIXES) else path
