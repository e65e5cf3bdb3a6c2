"""The training step as a Dagster Pipes subprocess.

The ``flame_model`` asset launches ``<launcher> -m orchestration.train_step ...`` where the
launcher is ``orchestration.train_launcher`` (empty: this Python; or e.g. ``torchrun
--nnodes=2 --nproc_per_node=8 ...``). Every rank trains (``flame.app.pipeline.train``); rank 0
alone logs to MLflow and reports the materialisation back to Dagster, with the metrics of each
logged step forwarded to the run's log. ``orchestration.ray_train`` runs this same ``run`` in
each of its Ray Train workers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext

from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes

from flame.app import pipeline
from flame.config import ConfigError, FlameConfig, load_config
from flame.errors import FlameError
from flame.locations import location
from flame.tracking import NullTracker

SUMMARY_KEYS = ("checkpoint", "training_id", "steps", "epochs", "samples", "images_per_sec", "first_loss",
                "last_loss", "world_size", "mlflow_run_id", "mlflow_experiment_id")


class PipesTracker(NullTracker):
    """Forwards training metrics to a log with ``info(message)``: the Dagster run's, through Pipes."""

    def __init__(self, log):
        self.log = log

    def log_metrics(self, metrics, step=None):
        body = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        self.log.info(f"step {step}: {body}" if step is not None else body)


def build_parser(prog: str = "python -m orchestration.train_step", description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description or __doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="path to params.yaml")
    p.add_argument("--profile", default=None, help="configuration profile")
    p.add_argument("--training-set", required=True, help="the training set folder or URL (shards/ and embeddings/<fingerprint>/)")
    p.add_argument("--training-id", required=True, help="the training's identity, as the asset computed it")
    p.add_argument("--out", required=True, help="checkpoint folder or URL (continued when it holds this training)")
    p.add_argument("--overrides-json", default="{}",
                   help='JSON object merged over the profile, e.g. \'{"train": {"epochs": 5, "seed": 1}}\'')
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: config.tracking.tracking_uri)")
    p.add_argument("--run-name", default=None, help="MLflow run name")
    p.add_argument("--tags-json", default="{}", help="JSON object of extra MLflow run tags (e.g. git commit, DVC hashes)")
    return p


def _json_object(text: str, flag: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise FlameError(f"{flag} must be a JSON object, got {text!r}")
    return value


def load(args: argparse.Namespace) -> FlameConfig:
    """The training's configuration: the profile, ``--overrides-json`` and ``--tracking-uri`` over it."""
    overrides = _json_object(args.overrides_json, "--overrides-json")
    if args.tracking_uri:
        overrides["tracking"] = {**overrides.get("tracking", {}), "tracking_uri": args.tracking_uri}
    return load_config(args.config, args.profile, overrides=overrides)


def tags(args: argparse.Namespace) -> dict:
    return _json_object(args.tags_json, "--tags-json")


def run(args: argparse.Namespace, log=None) -> dict:
    """Train as ``args`` say; the metrics of each logged step go to ``log.info`` too."""
    config = load(args)
    start = time.monotonic()
    summary = pipeline.train(config, pipeline.TrainingSet(location(args.training_set)), args.out, args.training_id,
                             tags=tags(args), run_name=args.run_name,
                             trackers=(PipesTracker(log),) if log is not None else ())
    meta = {k: summary[k] for k in SUMMARY_KEYS if summary.get(k) is not None}
    meta["seconds"] = round(time.monotonic() - start, 1)
    if summary.get("losses"):
        meta["epoch_losses"] = [float(x) for x in summary["losses"]]
    return meta


def report(train, args: argparse.Namespace, reporting: bool) -> int:
    """``train(args, pipes_log)``, its summary printed and, when ``reporting`` to Dagster Pipes,
    sent as the materialisation; a FlameError or ConfigError is one error line and exit 2."""
    with (open_dagster_pipes() if reporting else nullcontext()) as pipes:
        try:
            meta = train(args, pipes.log if pipes is not None else None)
        except (FlameError, ConfigError) as exc:
            print(f"training: error: {exc}", file=sys.stderr)
            if pipes is not None:
                pipes.log.error(str(exc))
            return 2
        if pipes is not None:
            pipes.report_asset_materialization(metadata=meta)
        print(json.dumps(meta))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report(run, args, int(os.environ.get("RANK", "0")) == 0 and DAGSTER_PIPES_CONTEXT_ENV_VAR in os.environ)


if __name__ == "__main__":
    sys.exit(main())
