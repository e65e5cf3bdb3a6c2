"""Cheap copies of files: a hard link where the file system allows one, a copy where it does not."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def link_or_copy(src: str | Path, dst: str | Path) -> str | Path:
    """Hard-link ``src`` at ``dst`` (a copy on another file system, or where links are refused);
    returns ``dst``, so it serves as ``shutil.copytree``'s ``copy_function``."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
