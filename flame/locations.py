"""Where data lives: a local folder or an object-store URL (``s3://bucket/prefix``), one
pathlib-like type for both (``universal_pathlib`` over fsspec), and the moves between them.

The object store is configured as boto3, s3fs and MLflow are: ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``.

Steps that need a local file (torch, safetensors, PIL) read a remote one through ``fetch``: a
cache under ``$FLAME_CACHE/objects`` keyed by the object's content tag (its ETag, an MD5 of the
bytes for a single-part upload, and its size), so a changed object is never served stale and an
unchanged one is read over the network once. What a step makes locally goes up with ``publish``:
one object ``PUT`` each, which readers see whole or not at all (``flame.atomic`` writes a
remote target the same way).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from flame.atomic import atomic_path
from flame.cache import cache_dir
from flame.digest import Digest
from flame.errors import FlameError
from flame.files import link_or_copy
from flame.paths import is_url

Location = Path  # a pathlib.Path, or a upath.UPath (a Path subclass) for a URL


def location(value: str | os.PathLike) -> Location:
    """``value`` as a path object: a ``UPath`` for a URL (listings never cached, since other
    processes write there too), else a ``pathlib.Path``."""
    if is_url(value):
        if not isinstance(value, str):
            return value  # already a UPath
        from upath import UPath  # fsspec and its store are loaded only when a URL is used

        return UPath(str(value), use_listings_cache=False)
    return Path(value)


def remove_tree(path: Location) -> None:
    """Remove the folder ``path`` and everything under it; nothing when it is not there."""
    if is_url(path):
        if path.exists():
            path.fs.rm(path.path, recursive=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def files_under(root: Location) -> list[str]:
    """The relative names of the files under ``root`` (all depths), sorted."""
    if is_url(root):
        base = root.path.rstrip("/")
        return sorted(name[len(base) + 1:] for name in root.fs.find(base))
    root = Path(root)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def copy_file(src: Location, dst: Location) -> None:
    """``src`` at ``dst``: a server-side copy within one store, a hard link (or copy) locally."""
    if is_url(src) and is_url(dst) and src.protocol == dst.protocol:
        src.fs.copy(src.path, dst.path)
    elif is_url(dst):
        publish(fetch(src), dst)
    else:
        with atomic_path(dst, suffix=Path(dst).suffix) as tmp:
            tmp.unlink()
            link_or_copy(fetch(src), tmp)


# ---- remote -> local ------------------------------------------------------------------------


def content_tag(path: Location) -> str:
    """What identifies a remote object's bytes: its ETag and size (the key of the local cache)."""
    try:
        info = path.fs.info(path.path)
    except FileNotFoundError:
        raise FlameError(f"{path}: no such object") from None
    tag = str(info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("crc32c") or "")
    if not tag:
        raise FlameError(f"{path}: the store reports no content tag (ETag) to key its local copy by")
    return Digest().add(tag.strip('"')).add(str(info.get("size"))).hexdigest()[:32]


def fetch(path: Location) -> Path:
    """A local file with ``path``'s bytes: the path itself when local, else its copy in the
    cache, downloaded once per content tag. Treat it as read-only: it is shared."""
    if not is_url(path):
        return Path(path)
    target = cache_dir("objects") / content_tag(path) / path.name
    if not target.is_file():
        with atomic_path(target, suffix=target.suffix) as tmp:
            path.fs.get_file(path.path, str(tmp))
    return target


def fetch_tree(root: Location, names: list[str] | None = None) -> Path:
    """A local folder with the files ``names`` (default: all) under ``root``, each a link to its
    cached copy: ``root`` itself when local. Read-only, like ``fetch``'s files."""
    if not is_url(root):
        return Path(root)
    names = files_under(root) if names is None else names
    cached = {name: fetch(root / name) for name in names}
    digest = Digest().add(str(root))
    for name, copy in cached.items():
        digest.add(f"{name}={copy.parent.name}")
    view = cache_dir("views") / digest.hexdigest()[:32]
    if not view.is_dir():
        view.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".view-", dir=view.parent))
        for name, source in cached.items():
            (building / name).parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(source, building / name)
        try:
            os.replace(building, view)
        except OSError:  # built meanwhile by another process: theirs is the same
            shutil.rmtree(building, ignore_errors=True)
    return view


def copy_tree_to_local(root: Location, dest: Path) -> None:
    """Every file under ``root`` written into ``dest`` as a private copy (it may be changed)."""
    for name in files_under(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target, suffix=target.suffix) as tmp:
            shutil.copyfile(fetch(root / name), tmp)


# ---- local -> remote ------------------------------------------------------------------------


def publish(local: str | Path, dst: Location) -> None:
    """The local file ``local`` at ``dst``, whole or not at all."""
    if is_url(dst):
        dst.fs.put_file(str(local), dst.path)
    else:
        copy_file(Path(local), dst)


def publish_tree(local_dir: Path, dst: Location, names: list[str] | None = None) -> list[Location]:
    """The files ``names`` (default: all) under ``local_dir`` at the same names under ``dst``."""
    names = files_under(local_dir) if names is None else names
    for name in names:
        publish(local_dir / name, dst / name)
    return [dst / name for name in names]


@contextmanager
def staged_file(dst: Location) -> Iterator[Path]:
    """A local path named as ``dst`` to write (atomically, as every writer here does); on success
    it is uploaded to a remote ``dst``. A local ``dst`` is written in place."""
    if not is_url(dst):
        yield Path(dst)
        return
    with atomic_path(dst) as local:
        yield local


@contextmanager
def staged_dir(dst: Location) -> Iterator[Path]:
    """A local folder to write into; on success its files are at ``dst`` (a local ``dst`` is
    written in place)."""
    if not is_url(dst):
        Path(dst).mkdir(parents=True, exist_ok=True)
        yield Path(dst)
        return
    with tempfile.TemporaryDirectory(prefix="flame-stage-") as tmp:
        yield Path(tmp)
        publish_tree(Path(tmp), dst)
