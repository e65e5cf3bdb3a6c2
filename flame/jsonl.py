"""Reading JSONL files: one JSON object per line, errors naming the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from flame.errors import FlameError


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` for each non-blank line of ``path``."""
    path = Path(path)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise FlameError(f"{path}:{lineno}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FlameError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise FlameError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record
