"""The end-to-end demo, through Dagster: ``python -m orchestration.demo`` (``flame demo``, ``make demo``).

Registers the configured manifests' data shards as partitions, materialises the data
assets of every shard not yet embedded, then trains, evaluates and registers, all
in-process against a persistent Dagster instance (``$DAGSTER_HOME``, default
``.dagster_home/`` in the repo, given the project's ``orchestration/dagster.yaml`` when it has
none) so the runs show up in the Dagster UI afterwards. What it makes is recorded by DVC as
``dvc repro`` would (``orchestration.versioning``): afterwards ``dvc status`` is clean and
``dvc.lock`` is the pointer file to commit.
The last line printed is one JSON object (see ``summary_line``).
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from flame.config import load_config, repo_root
from flame.errors import FlameError

INSTANCE_CONFIG = Path(__file__).with_name("dagster.yaml")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestration.demo", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="path to params.yaml (default: the project's)")
    p.add_argument("--profile", default=None, help="configuration profile (default: params.yaml's, i.e. tiny)")
    p.add_argument("--dagster-home", default=None,
                   help="Dagster instance folder (default: $DAGSTER_HOME, else .dagster_home in the repo)")
    p.add_argument("--storage-root", default=None, help="where assets are written (default: orchestration.storage_root)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: tracking.tracking_uri, sqlite:///mlflow.db)")
    return p


def _ok(result, what: str) -> None:
    """Turn a failed run into one clear error naming the step and its error."""
    if result.success:
        return
    failures = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE" and event.event_specific_data and event.event_specific_data.error:
            error = event.event_specific_data.error
            while error.cause is not None:  # Dagster wraps the asset's own exception
                error = error.cause
            failures.append(f"{event.step_key}: {error.message.strip()}")
    detail = "; ".join(failures) or "see the run's logs in the Dagster UI"
    raise FlameError(f"{what} failed (run {result.run_id}): {detail}")


def run_demo(args: argparse.Namespace) -> dict:
    # Imported once main() has set the environment: huggingface_hub reads HF_HUB_OFFLINE when imported.
    from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

    from flame.data.data_shards import discover_chunks
    from orchestration.checks import ALL_CHECKS
    from orchestration.definitions import pipeline_assets
    from orchestration.jobs import INGEST_ASSETS, MODEL_ASSETS
    from orchestration.lineage import latest_record, metadata_of
    from orchestration.partitions import DATA_SHARDS
    from orchestration.resources import build_resources

    started = time.monotonic()
    params = str(Path(args.config).resolve()) if args.config else str(repo_root() / "params.yaml")
    config = load_config(params, args.profile)
    resources = build_resources(params_path=params, profile=config.profile,
                                tracking_uri=args.tracking_uri or "", storage_root=args.storage_root or "")
    instance = DagsterInstance.get()
    keys = [c.key for c in discover_chunks(config)]
    known = set(instance.get_dynamic_partitions(DATA_SHARDS.name))
    instance.add_dynamic_partitions(DATA_SHARDS.name, [k for k in keys if k not in known])
    done = instance.get_materialized_partitions(AssetKey("caption_embeddings"))
    todo = [k for k in keys if k not in done]
    steps: dict[str, float] = {}
    assets = pipeline_assets(config) + ALL_CHECKS
    print(f"demo: {len(keys)} data shards ({len(todo)} new) from {', '.join(config.orchestration.manifests)}", flush=True)
    for key in todo:
        t = time.monotonic()
        _ok(materialize(assets, instance=instance, resources=resources, partition_key=key,
                        selection=AssetSelection.assets(*INGEST_ASSETS), tags={"flame/demo": "1"},
                        raise_on_error=False),
            f"ingesting data shard {key}")
        steps[f"ingest {key}"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    result = materialize(assets, instance=instance, resources=resources,
                         selection=AssetSelection.assets(*MODEL_ASSETS), tags={"flame/demo": "1"},
                         raise_on_error=False)
    _ok(result, "train -> evaluate -> register")
    steps["train+evaluate+register"] = round(time.monotonic() - t, 1)

    durations = {}
    for record in result.all_events:
        if record.event_type_value == "STEP_SUCCESS":
            durations[record.step_key] = round(record.event_specific_data.duration_ms / 1000, 1)
    model, scored, registered = (metadata_of(latest_record(instance, key))
                                 for key in ("flame_model", "evaluation", "registered_model"))
    storage = resources["storage"].paths(config)
    tracking_uri = resources["mlflow"].uri(config)
    return {
        "config": config,
        "keys": keys,
        "steps": {**steps, **{f"  {k}": v for k, v in durations.items()}},
        "storage": storage,
        "tracking_uri": tracking_uri,
        "model": model,
        "evaluation": scored,
        "registered": registered,
        "seconds": round(time.monotonic() - started, 1),
    }


def report(out: dict, dagster_home: str) -> str:
    """Print what was produced and how to look at it; return the closing JSON line."""
    reg, model, ev = out["registered"], out["model"], out["evaluation"]
    storage = out["storage"]
    print("\n=== FLAME demo: produced ===")
    print(f"data shards          {len(out['keys'])}: {storage.shards}")
    print(f"caption embeddings   {storage.embeddings}")
    print(f"checkpoint           {model['checkpoint']}  (flame.model.load)")
    print(f"training             {model.get('steps')} steps, epoch losses {model.get('epoch_losses')}")
    print(f"evaluation           {ev['result']}")
    for name, value in sorted(ev["metrics"].items()):
        if "chance" not in name:
            print(f"    {name:50s} {value:.4f}")
    print(f"MLflow run           {model.get('mlflow_run', model.get('mlflow_run_id'))}")
    print(f"registered model     {reg['registered_model']} v{reg['version']} aliases {reg['aliases']} ({reg['decision']}: {reg['reason']})")
    print("time per step (s):")
    for name, seconds in out["steps"].items():
        print(f"    {name:40s} {seconds}")
    print("\nOpen the UIs:")
    print(f"  DAGSTER_HOME={dagster_home} {Path(sys.executable).parent / 'dagster'} dev -m orchestration.definitions")
    print(f"  {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {out['tracking_uri']}")
    line = {
        "registered_model": reg["registered_model"],
        "version": int(reg["version"]),
        "aliases": list(reg["aliases"]),
        "checkpoint": str(model["checkpoint"]),
        "metrics": {k: v for k, v in ev["metrics"].items()},
        "seconds": out["seconds"],
        "steps": {name.strip(): seconds for name, seconds in out["steps"].items()},
    }
    return json.dumps(line, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.dagster_home:
        os.environ["DAGSTER_HOME"] = str(Path(args.dagster_home).resolve())
    os.environ.setdefault("DAGSTER_HOME", str(repo_root() / ".dagster_home"))
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():  # the pools' limits, among others; an existing one is the operator's
        shutil.copyfile(INSTANCE_CONFIG, home / "dagster.yaml")
    # The Definitions read these too, so the Dagster UI started afterwards shows the same setup.
    if args.config:
        os.environ["FLAME_CONFIG"] = str(Path(args.config).resolve())
    if args.profile:
        os.environ["FLAME_PROFILE"] = args.profile
    try:
        out = run_demo(args)
    except FlameError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    print(report(out, os.environ["DAGSTER_HOME"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
