"""The training step as a Dagster Pipes subprocess.

The ``flame_model`` asset launches ``<launcher> -m orchestration.train_step ...`` where
the launcher is ``config.orchestration.train_launcher`` (empty: this Python; or e.g.
``torchrun --nnodes=2 --nproc_per_node=8 ...``). Every rank trains; rank 0 alone logs
to MLflow and reports the materialisation back to Dagster. Run by hand (no Dagster)
it simply trains.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from flame import checkpoint
from flame.atomic import write_json
from flame.config import load_config
from flame.errors import FlameError
from flame.tracking import ConsoleTracker, MultiTracker, NullTracker


class PipesTracker(NullTracker):
    """Forwards training metrics to the Dagster run's log."""

    def __init__(self, pipes):
        self.pipes = pipes

    def log_metrics(self, metrics, step=None):
        body = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        self.pipes.log.info(f"step {step}: {body}" if step is not None else body)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestration.train_step", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="path to params.yaml")
    p.add_argument("--profile", default=None, help="configuration profile")
    p.add_argument("--shards", required=True, help="folder of image shards (.tar)")
    p.add_argument("--embeddings", required=True, help="embedding store folder")
    p.add_argument("--out", required=True, help="checkpoint folder (resumed when it holds a partial training)")
    p.add_argument("--epochs", type=int, default=None, help="stop after this many epochs (the LR schedule still spans train.epochs)")
    p.add_argument("--overrides-json", default="{}",
                   help='JSON object merged over the profile, e.g. \'{"train": {"epochs": 5, "seed": 1}}\'')
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: config.tracking.tracking_uri)")
    p.add_argument("--no-mlflow", action="store_true", help="log to the console only")
    p.add_argument("--run-name", default=None, help="MLflow run name")
    p.add_argument("--tags-json", default="{}", help="JSON object of extra MLflow run tags (e.g. git commit, DVC hashes)")
    return p


def _mlflow_tracker(config, out: Path, uri: str | None, run_name: str | None, tags: dict):
    from flame.mlflow.tracker import MlflowTracker

    # The MLflow run of this checkpoint folder, so a resumed training continues it.
    run_file = out / checkpoint.MLFLOW_RUN_FILE
    previous = json.loads(run_file.read_text(encoding="utf-8"))["run_id"] if run_file.is_file() else None
    tracker = MlflowTracker(config, run_name=run_name, tracking_uri=uri, run_id=previous,
                            tags={"flame.checkpoint": str(out), **tags})
    write_json(run_file, {"run_id": tracker.run_id, "experiment_id": tracker.experiment_id,
                          "tracking_uri": tracker.tracking_uri})
    return tracker


def loss_plot(losses: list[float], target: Path) -> Path | None:
    if not losses:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flame.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(1, len(losses) + 1), losses)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    fig.tight_layout()
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target


def summary_metadata(summary: dict, seconds: float, run: dict | None) -> dict:
    losses = [float(x) for x in summary.get("losses") or []]
    meta: dict = {
        "checkpoint": str(summary.get("checkpoint", "")),
        "seconds": round(seconds, 1),
    }
    for key in ("steps", "epochs", "samples", "images_per_sec", "first_loss", "last_loss", "world_size"):
        if isinstance(summary.get(key), (int, float)):
            meta[key] = summary[key]
    if losses:
        meta["epoch_losses"] = losses
    if run:
        meta["mlflow_run_id"] = run["run_id"]
        meta["mlflow_experiment_id"] = run["experiment_id"]
    return meta


def run(args: argparse.Namespace, pipes=None) -> dict:
    from flame.train import run_training

    overrides = json.loads(args.overrides_json)
    if not isinstance(overrides, dict):
        raise FlameError(f"--overrides-json must be a JSON object, got {args.overrides_json!r}")
    config = load_config(args.config, args.profile, overrides=overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    trackers = [ConsoleTracker(config.train.log_every_steps)]
    mlflow_tracker = None
    if rank == 0 and not args.no_mlflow:
        tags = json.loads(args.tags_json)
        if not isinstance(tags, dict):
            raise FlameError(f"--tags-json must be a JSON object, got {args.tags_json!r}")
        mlflow_tracker = _mlflow_tracker(config, out, args.tracking_uri, args.run_name, tags)
        trackers.append(mlflow_tracker)
    if pipes is not None:
        trackers.append(PipesTracker(pipes))
    tracker = MultiTracker(*trackers)
    resume = checkpoint.has_checkpoint(out)
    start = time.monotonic()
    try:
        summary = run_training(config, args.shards, args.embeddings, out, epochs=args.epochs,
                               resume=resume, tracker=tracker)
    except BaseException:
        if mlflow_tracker is not None:
            mlflow_tracker.close("FAILED")
        raise
    seconds = time.monotonic() - start
    run_info = None
    if mlflow_tracker is not None:
        plot = loss_plot([float(x) for x in summary.get("losses") or []], out / checkpoint.LOSS_PLOT_FILE)
        for path in (plot, out / checkpoint.CONFIG_FILE):
            if path is not None and path.is_file():
                mlflow_tracker.log_artifact(path, "training")
        mlflow_tracker.close("FINISHED")
        run_info = json.loads((out / checkpoint.MLFLOW_RUN_FILE).read_text(encoding="utf-8"))
    summary.setdefault("checkpoint", str(out))
    return summary_metadata(summary, seconds, run_info)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes

    reporting = rank == 0 and DAGSTER_PIPES_CONTEXT_ENV_VAR in os.environ
    with (open_dagster_pipes() if reporting else nullcontext()) as pipes:
        try:
            meta = run(args, pipes)
        except FlameError as exc:
            print(f"training: error: {exc}", file=sys.stderr)
            if pipes is not None:
                pipes.log.error(str(exc))
            return 2
        if pipes is not None:
            pipes.report_asset_materialization(metadata=meta)
        print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
