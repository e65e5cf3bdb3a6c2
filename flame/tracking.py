"""A small tracker interface: the training loop logs through it, never to a backend directly.

Backends here: console and JSONL. ``flame.mlflow.tracker`` adds MLflow behind the same interface.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from flame.atomic import write_text


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    def log_params(self, params): pass
    def log_metrics(self, metrics, step=None): pass
    def log_artifact(self, path, artifact_path=None): pass
    def set_tags(self, tags): pass
    def close(self, status="FINISHED"): pass


class ConsoleTracker(NullTracker):
    def __init__(self, every: int = 1):
        self.every = max(1, every)

    def log_metrics(self, metrics, step=None):
        if step is None or step % self.every == 0:
            body = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
            # stderr, with the progress bars: stdout carries a command's result alone
            print(f"[step {step}] {body}" if step is not None else body, file=sys.stderr, flush=True)


class JsonlTracker(NullTracker):
    """Appends one JSON object per call to ``path`` (metrics, params and tags alike)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, record: dict[str, Any]) -> None:
        record["time"] = time.time()
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")

    def log_params(self, params):
        self._write({"params": params})

    def log_metrics(self, metrics, step=None):
        self._write({"step": step, "metrics": metrics})

    def drop_after(self, step: int) -> None:
        """Forget the metrics of steps after ``step``, and a last line torn by a kill."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (record.get("step") or 0) <= step:
                kept.append(line + "\n")
        write_text(self.path, "".join(kept))

    def set_tags(self, tags):
        self._write({"tags": tags})


class MultiTracker(NullTracker):
    def __init__(self, *trackers: Tracker):
        self.trackers = [t for t in trackers if t is not None]

    def log_params(self, params):
        for t in self.trackers:
            t.log_params(params)

    def log_metrics(self, metrics, step=None):
        for t in self.trackers:
            t.log_metrics(metrics, step)

    def log_artifact(self, path, artifact_path=None):
        for t in self.trackers:
            t.log_artifact(path, artifact_path)

    def set_tags(self, tags):
        for t in self.trackers:
            t.set_tags(tags)

    def close(self, status="FINISHED"):
        for t in self.trackers:
            t.close(status)

