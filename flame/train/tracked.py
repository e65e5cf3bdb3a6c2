"""Tracked training: ``run_training`` with its run in MLflow. One MLflow run per checkpoint
folder (recorded in its ``mlflow_run.json``, so a resumed training continues its run), every
configuration value as a param, step and epoch metrics, and at the end the loss plot, the
model config and the summary as artifacts. ``flame train``, the Dagster training step and the
DVC stage all train through here. Only rank 0 of a distributed training talks to MLflow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from flame import checkpoint
from flame.atomic import atomic_path, write_json
from flame.config import FlameConfig
from flame.tracking import ConsoleTracker, MultiTracker, Tracker
from flame.train.loop import run_training


def train_tracked(
    config: FlameConfig,
    shards_dir: str | Path,
    embeddings_dir: str | Path | None,
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    resume: bool = False,
    tracking: bool = True,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    trackers: tuple[Tracker, ...] = (),
    on_checkpoint: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train as ``run_training`` does, logging to the console, to ``trackers`` and, with
    ``tracking``, to the MLflow run of ``out_dir`` at ``tracking.tracking_uri`` (its ``tags``
    added: the data's versions, the orchestrator's run). The store is checked before anything
    trains. Returns the training summary, with ``mlflow_run_id`` and ``mlflow_experiment_id``
    when tracked."""
    out = Path(out_dir)
    mlflow_tracker = None
    if tracking and int(os.environ.get("RANK", "0")) == 0:
        mlflow_tracker = _run_of_folder(config, out, run_name, tags or {})
    tracker = MultiTracker(ConsoleTracker(config.train.log_every_steps), *trackers, mlflow_tracker)
    try:
        summary = run_training(config, shards_dir, embeddings_dir, out, epochs=epochs, resume=resume, tracker=tracker,
                               on_checkpoint=on_checkpoint)
    except BaseException as exc:
        if mlflow_tracker is not None:
            mlflow_tracker.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if mlflow_tracker is not None:
        plot = loss_plot([float(x) for x in summary.get("losses") or []], out / checkpoint.LOSS_PLOT_FILE)
        for path in (plot, out / checkpoint.CONFIG_FILE):
            if path is not None and path.is_file():
                mlflow_tracker.log_artifact(path, "training")
        mlflow_tracker.close("FINISHED")
        summary.update(mlflow_run_id=mlflow_tracker.run_id, mlflow_experiment_id=mlflow_tracker.experiment_id)
    return summary


def _run_of_folder(config: FlameConfig, out: Path, run_name: str | None, tags: dict[str, str]):
    from flame.mlflow.tracker import MlflowTracker  # mlflow is slow to import: only when tracking

    run_file = out / checkpoint.MLFLOW_RUN_FILE
    previous = json.loads(run_file.read_text(encoding="utf-8"))["run_id"] if run_file.is_file() else None
    tracker = MlflowTracker(config, run_name=run_name, run_id=previous, tags={"flame.checkpoint": str(out), **tags})
    out.mkdir(parents=True, exist_ok=True)
    write_json(run_file, {"run_id": tracker.run_id, "experiment_id": tracker.experiment_id,
                          "tracking_uri": tracker.tracking_uri})
    return tracker


def loss_plot(losses: list[float], target: Path) -> Path | None:
    """The mean training loss per epoch as a PNG at ``target`` (None when there is no epoch yet)."""
    if not losses:
        return None
    import matplotlib  # only for the plot: matplotlib is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(1, len(losses) + 1), losses)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    fig.tight_layout()
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target
