"""One writer per checkpoint folder.

On a local disk: an exclusive ``fcntl`` lock beside the folder, released by the kernel when its
holder dies. In an object store, which every machine of a deployment writes to: a lease object
created only if absent (a conditional ``PUT``, ``If-None-Match: *``), deleted on exit; a lease whose
holder is known to have ended (``is_stale``: e.g. its Dagster run finished) is taken over.
A second holder is refused, naming the first. (Dagster's ``flame-train`` pool already serialises
the trainings of one instance; this also covers a second instance or a hand-run training.)
"""

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from flame.errors import FlameError
from flame.locations import Location, is_url


@contextmanager
def exclusive(lock_file: Location, owner: str, what: str, is_stale: Callable[[str], bool] | None = None):
    """Hold ``lock_file`` for the block; a second holder is refused naming the first."""
    if is_url(lock_file):
        with _lease(lock_file, owner, what, is_stale or (lambda _: False)):
            yield
        return
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise FlameError(f"{what} is in use by {handle.read().strip() or 'another process'} ({lock_file})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(owner)
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _create(lock_file: Location, owner: str) -> bool:
    try:
        with lock_file.fs.open(lock_file.path, "xb") as handle:
            handle.write(owner.encode("utf-8"))
        return True
    except FileExistsError:
        return False


@contextmanager
def _lease(lock_file: Location, owner: str, what: str, is_stale: Callable[[str], bool]):
    if not _create(lock_file, owner):
        try:
            holder = lock_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            holder = ""
        if not is_stale(holder):
            raise FlameError(f"{what} is in use by {holder or 'another process'} ({lock_file}; delete it if that "
                             "holder is gone)")
        lock_file.unlink(missing_ok=True)
        if not _create(lock_file, owner):
            raise FlameError(f"{what} was taken meanwhile by another process ({lock_file})")
    try:
        yield
    finally:
        lock_file.unlink(missing_ok=True)
