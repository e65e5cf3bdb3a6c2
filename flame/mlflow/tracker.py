"""MLflow behind the ``flame.tracking.Tracker`` interface.

One experiment per profile (``tracking.experiment`` or ``flame-<profile>``), one run per
training. The store is checked before the run starts (``store.connect``), so a training
never begins against a store it cannot log to.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from flame.config import FlameConfig
from flame.errors import FlameError
from flame.mlflow.store import connect, experiment_name, get_or_create_experiment, metric_name

_BATCH = 100  # MLflow's per-request limit on params (and a sane one for metrics and tags)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


class MlflowTracker:
    """A ``Tracker`` logging to one MLflow run.

    ``run_id`` continues an existing run (a resumed training); otherwise a new run is
    created in the profile's experiment and every configuration value is logged.
    """

    def __init__(
        self,
        config: FlameConfig,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        tracking_uri: str | None = None,
        run_id: str | None = None,
    ):
        self.config = config
        self.client = connect(config, tracking_uri)
        self.tracking_uri = self.client.tracking_uri  # absolute, as connect resolved it
        self._closed = False
        if run_id:
            run = self.client.get_run(run_id)
            self.run_id = run.info.run_id
            self.experiment_id = run.info.experiment_id
            if run.info.status != "RUNNING":
                self.client.update_run(self.run_id, status="RUNNING")
            if tags:
                self.set_tags(tags)
            return
        self.experiment_id = get_or_create_experiment(self.client, experiment_name(config), config.tracking.artifact_location)
        base_tags = {"flame.profile": config.profile}
        base_tags.update(tags or {})
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=base_tags)
        self.run_id = run.info.run_id
        self.log_params(config.to_flat_dict())

    # -- Tracker interface --------------------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        """Log new params; MLflow refuses to change a logged value, so a value that differs
        (a resumed training with an override) is recorded as tag ``flame.param_changed.<key>``."""
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params
        new = {k: _param_value(v) for k, v in params.items()}
        items = [Param(k, v) for k, v in new.items() if k not in logged]
        changed = {f"flame.param_changed.{k}": v for k, v in new.items() if k in logged and logged[k] != v}
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])
        if changed:
            self.set_tags(changed)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # strings and lists are not metrics; they belong in params/tags
            if not math.isfinite(float(value)):
                continue
            items.append(Metric(metric_name(key), float(value), now, step or 0))
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():
            raise FlameError(f"cannot log artifact {path}: it does not exist")
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + _BATCH])

    def close(self, status: str = "FINISHED") -> None:
        if not self._closed:
            self.client.set_terminated(self.run_id, status)
            self._closed = True

    def log_evaluation(self, summary: dict[str, Any], files: list[str | Path] = ()) -> None:
        """Log an evaluation's flat ``{benchmark}/{metric}`` summary and its files (JSON, plots)."""
        self.log_metrics(summary)
        for f in files:
            self.log_artifact(f, "evaluation")

    def __enter__(self) -> "MlflowTracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("FINISHED")
        else:
            self.close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
