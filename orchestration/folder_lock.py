"""One writer per checkpoint folder on this machine: an exclusive ``fcntl`` lock beside it, held
while a training writes there; a second holder is refused, naming the first. (Dagster's
``flame-train`` pool already serialises the trainings of one instance; this also covers a second
instance or a hand-run ``flame train`` on the same storage.)"""

import fcntl
from contextlib import contextmanager
from pathlib import Path

from flame.errors import FlameError


@contextmanager
def exclusive(lock_file: Path, owner: str, what: str):
    """Hold ``lock_file`` for the block; a second holder is refused naming the first."""
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
