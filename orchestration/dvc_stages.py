"""The commands of ``dvc.yaml``'s stages: the pipeline's steps (``flame.app.pipeline``) over every
data shard of the manifests (``orchestration.manifests`` and those in the incoming folder), in the
storage layout under the storage root. ``dvc repro`` runs them; a Dagster run makes the same files
a partition at a time and records the same stages (``orchestration.versioning``).

    python -m orchestration.dvc_stages {shards,embeddings,train,evaluate,register} [--profile P] [--config FILE]

``train`` continues the training of the same identity (same data and weight-changing settings)
in ``models/<training id>/``; ``evaluate`` and ``register`` act on that training.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from flame import checkpoint
from flame.app import pipeline
from flame.config import FlameConfig, default_params_path, load_config
from flame.data.data_shards import discover_chunks
from flame.errors import FlameError
from flame.storage import StoragePaths
from orchestration.versioning import lineage_tags

STAGES = ("shards", "embeddings", "train", "evaluate", "register")


def run_stage(stage: str, config: FlameConfig, repo: Path) -> dict:
    """Run one stage; returns what it printed as its result."""
    paths = StoragePaths(config.orchestration.storage_root)
    chunks = discover_chunks(config)
    keys = [c.key for c in chunks]
    if stage == "shards":
        done = {}
        for chunk in chunks:
            pipeline.write_data_shard_manifest(config, paths, chunk)
            summary = pipeline.download_data_shard(config, paths, chunk.key)
            done[chunk.key] = {"success": summary["success"], "total": summary["total"]}
        return {"shards": done}
    if stage == "embeddings":
        summary = pipeline.embed_data_shards(config, paths, keys, progress=True)
        return {k: summary[k] for k in ("store", "shards_done", "shards_skipped", "samples")}
    inputs = pipeline.training_inputs(config, paths, keys)
    training_id = inputs.identity.id
    model = paths.model(training_id)
    if stage == "train":
        training_set = pipeline.assemble_training_set(inputs, paths)
        tags = lineage_tags(repo, ("data/shards", "data/embeddings"))
        summary = pipeline.train(config, training_set, model, training_id, tags=tags, run_name=f"dvc-{training_id}")
        return {k: summary.get(k) for k in ("training_id", "checkpoint", "epochs", "steps", "mlflow_run_id")}
    run_id = _mlflow_run_of(model)
    if stage == "evaluate":
        result = pipeline.evaluate(config, model, paths.evaluation(training_id), run_id=run_id)
        return {"training_id": training_id, "result": str(result["result_file"]), "summary": result["summary"]}
    if stage == "register":
        lineage = lineage_tags(repo, ("data/shards", "data/embeddings", "data/training_sets"))
        decision = pipeline.register(config, model, training_id=training_id, run_id=run_id, lineage=lineage)
        return decision.to_dict()
    raise FlameError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")


def _mlflow_run_of(model: Path) -> str | None:
    if not checkpoint.has_checkpoint(model):
        raise FlameError(f"{model}: no training there yet; run the train stage first (dvc repro train)")
    run_file = model / checkpoint.MLFLOW_RUN_FILE
    return json.loads(run_file.read_text(encoding="utf-8"))["run_id"] if run_file.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.dvc_stages", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--profile", default=None, help="configuration profile (default: params.yaml's)")
    parser.add_argument("--config", default=None, help="params.yaml (default: ./params.yaml, else the project's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = Path(args.config) if args.config else default_params_path()
    try:
        result = run_stage(args.stage, load_config(params, args.profile), params.resolve().parent)
    except FlameError as exc:
        print(f"stage {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
