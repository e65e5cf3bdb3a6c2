"""Files by content and cheap copies of them: a file's sha256, and a hard link where the file
system allows one (a copy where it does not)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def link_or_copy(src: str | Path, dst: str | Path) -> str | Path:
    """Hard-link ``src`` at ``dst`` (a copy on another file system, or where links are refused);
    returns ``dst``, so it serves as ``shutil.copytree``'s ``copy_function``."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
