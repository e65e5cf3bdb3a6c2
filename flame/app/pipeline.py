"""The pipeline's steps over the storage layout (``flame.storage``), one function each: write a
data shard's manifest, download it, embed data shards, gather what a training reads, assemble
its training set, train (tracked), evaluate, register and gate.

Dagster's assets (``orchestration.assets``), the DVC stages (``orchestration.dvc_stages``) and the
command line call these; none of them re-implements a step. The drivers only choose the data
shards (Dagster: one partition at a time; DVC: all of them) and record what was made (metadata,
``dvc.lock``).

The storage root may be an object-store URL (``flame.storage``, ``flame.locations``): each step
then reads what it needs through the content-keyed local cache, works on local files, and
publishes what it made under the root; the paths it returns are URLs, which any machine can open.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluations.runner import evaluate_benchmarks
from flame import checkpoint
from flame.app import promotion
from flame.atomic import write_json
from flame.config import FlameConfig
from flame.data.data_shards import ManifestChunk
from flame.data.download import SUMMARY_FILE, download_shards
from flame.data.manifest import write_manifest_slice
from flame.data.plan import shard_digests
from flame.digest import sha256_file
from flame.errors import FlameError
from flame.cache import cache_dir
from flame.files import link_or_copy
from flame.locations import (Location, copy_file, copy_tree_to_local, fetch, fetch_tree, files_under, is_url,
                             location, publish_tree, staged_dir, staged_file)
from flame.mlflow.tracker import MlflowTracker
from flame.model import load as load_model
from flame.storage import SHARD_SUFFIXES, TRAINING_SET_FILE, StoragePaths
from flame.text.embed import InputShard, embed_shards, find_store
from flame.text.store import META_FILE, SHARD_SUFFIX, EmbeddingStore
from flame.text_modes import training_side
from flame.tracking import Tracker
from flame.train.identity import TrainingIdentity, training_identity
from flame.train.tracked import train_tracked


# ---- data ----------------------------------------------------------------------------------


def write_data_shard_manifest(config: FlameConfig, paths: StoragePaths, chunk: ManifestChunk) -> dict[str, Any]:
    """The chunk's rows of its manifest at ``manifests/<key>.jsonl``, URLs made absolute."""
    target = paths.manifest(chunk.key)
    with staged_file(target) as local:
        checked = write_manifest_slice(chunk.source, chunk.start, chunk.stop, local, config.data.url_col,
                                       config.data.caption_col)
        digest = sha256_file(local)
    return {"path": target, "count": chunk.stop - chunk.start, "usable": len(checked.rows),
            "skipped": checked.skipped_count, "rows": checked.rows, "sha256": digest}


def download_data_shard(config: FlameConfig, paths: StoragePaths, key: str, progress: bool = False) -> dict[str, Any]:
    """The data shard's images (img2dataset, resumable) published as ``shards/<key>.tar`` (a chunk
    larger than ``data.number_sample_per_shard`` makes ``<key>_1.tar``...); the download summary
    with the shard's path, sha256 and the published files."""
    out = paths.download(key)
    summary = download_shards(paths.manifest(key), out, config.data, progress=progress)
    published = []
    for i, name in enumerate(summary["shards"]):
        stem = key if i == 0 else f"{key}_{i}"
        for suffix in SHARD_SUFFIXES:
            src = out / f"{name}{suffix}"
            if src.exists():
                copy_file(src, paths.shards / f"{stem}{suffix}")
        published.append(paths.shards / f"{stem}.tar")
    shard = paths.shard(key)
    if not shard.is_file():
        raise FlameError(f"{shard}: img2dataset wrote no shard for {key} "
                         f"({summary['success']}/{summary['total']} images downloaded)")
    local = fetch(shard)
    return {**summary, "shard": shard, "shard_sha256": sha256_file(local), "shard_bytes": local.stat().st_size,
            "published": published, "summary_file": out / SUMMARY_FILE}


def embed_data_shards(config: FlameConfig, paths: StoragePaths, keys: list[str], *, recompute: bool = False,
                      progress: bool = False) -> dict[str, Any]:
    """The captions of the data shards ``keys`` embedded by the frozen LLM into the store under
    ``embeddings/`` (one LLM load for all of them); a shard embedded from the same bytes is kept
    unless ``recompute``. Under a remote root they are always embedded (into a local store whose
    files for ``keys`` are then published): Dagster asks for a data shard because it changed."""
    missing = [k for k in keys if not paths.shard(k).is_file()]
    if missing:
        raise FlameError(f"data shard(s) not downloaded yet: {', '.join(missing)} (no {paths.shard(missing[0])})")
    inputs = [InputShard(k, paths.shard(k)) for k in keys]
    if not paths.remote:
        return embed_shards(config.text, inputs, paths.embeddings, recompute=recompute, progress=progress)
    # Remote: embedded afresh into a local store, whose files for these shards are then published.
    with tempfile.TemporaryDirectory(prefix="flame-embed-") as staging:
        made = embed_shards(config.text, inputs, staging, recompute=True, progress=progress)
        store = EmbeddingStore.open(made["store"])
        target = paths.embeddings / store.fingerprint
        publish_tree(store.path, target, [store.shard_path(k).name for k in keys] + [META_FILE])
    return {**made, "store": str(target)}


# ---- training ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardInput:
    key: str
    shard: Path


@dataclass(frozen=True)
class TrainingInputs:
    """Exactly what one training reads, and who that training is."""

    shards: list[ShardInput]
    store: EmbeddingStore | None  # None in the CLIP baseline's text mode: it reads the captions
    identity: TrainingIdentity
    store_location: Location | None = None  # the store under the storage root (``store`` may be a local view)

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.shards]


def training_inputs(config: FlameConfig, paths: StoragePaths, keys: list[str]) -> TrainingInputs:
    """The data shards ``keys``, each downloaded and (frozen-LLM mode) embedded with the current
    text configuration from its current bytes; the error lists every shard that is not, and why.
    The training's identity follows from them and the configuration, without loading the LLM."""
    if not keys:
        raise FlameError("no data shards registered yet: the manifests of orchestration.manifests become data shards "
                         "through Dagster's new_manifest sensor, `flame demo` or `dvc repro shards`")
    digests, problems = {}, {}
    for key in sorted(keys):
        shard = paths.shard(key)
        if shard.is_file():
            digests[key] = sha256_file(fetch(shard))
        else:
            problems[key] = f"not downloaded ({shard} is missing)"
    store = None
    if config.text.mode == "flame":
        store = find_store(_local_embeddings(paths, list(digests)), config.text)
        if store is None:
            problems.update({k: "not embedded with the current text configuration" for k in digests})
        else:
            problems.update({k: "not embedded" for k in digests if not store.has(k)})
            for key in store.stale({k: d for k, d in digests.items() if store.has(k)}):
                problems[key] = "embedded from other bytes than its shard has now (it changed since)"
    if problems:
        listed = "; ".join(f"{k}: {why}" for k, why in sorted(problems.items()))
        raise FlameError(f"{len(problems)} of {len(keys)} data shards are not ready for training: {listed}")
    shards = fetch_tree(paths.shards, [f"{k}.tar" for k in digests]) if paths.remote else paths.shards
    side = training_side(config, shards, store.path if store else None)
    identity = training_identity(config, digests, side.text_fingerprint, side.source_fingerprint)
    remote_store = paths.embeddings / store.fingerprint if store is not None else None
    return TrainingInputs([ShardInput(k, paths.shard(k)) for k in digests], store, identity, remote_store)


def _local_embeddings(paths: StoragePaths, keys: list[str]) -> Path:
    """The embedding stores under the root, as a local folder: for a remote root, a view holding
    each store's metadata and its files of the shards ``keys`` only."""
    if not paths.remote:
        return paths.embeddings
    wanted = {META_FILE, *(f"{k}{SHARD_SUFFIX}" for k in keys)}
    names = [n for n in files_under(paths.embeddings) if n.count("/") == 1 and n.split("/")[1] in wanted]
    return fetch_tree(paths.embeddings, names)


@dataclass(frozen=True)
class TrainingSet:
    """``root/shards/<key>.tar`` and, frozen-LLM mode, ``root/embeddings/<fingerprint>/``; under a
    remote root it is complete once its ``training_set.json`` (what it holds) is there."""

    root: Location

    def local(self) -> "TrainingSet":
        """This set as local files (a remote one through the content-keyed cache)."""
        return TrainingSet(fetch_tree(self.root)) if is_url(self.root) else self

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def embeddings(self) -> Path | None:
        stores = sorted(p for p in (self.root / "embeddings").glob("*") if (p / META_FILE).is_file())
        return stores[0] if stores else None


def assemble_training_set(inputs: TrainingInputs, paths: StoragePaths) -> TrainingSet:
    """Exactly the files ``inputs`` names, linked under ``training_sets/<training id>/``: built
    aside and renamed into place, reused when it exists (its name is its content's identity)."""
    root = paths.training_set(inputs.identity.id)
    if paths.remote:
        return _assemble_remote(inputs, root)
    if root.is_dir():
        return TrainingSet(root)
    building = root.with_name(f".{root.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    (building / "shards").mkdir(parents=True)
    for item in inputs.shards:
        link_or_copy(item.shard, building / "shards" / f"{item.key}.tar")
    if inputs.store is not None:
        store_dir = building / "embeddings" / inputs.store.fingerprint
        store_dir.mkdir(parents=True)
        for item in inputs.shards:
            link_or_copy(inputs.store.shard_path(item.key), store_dir / inputs.store.shard_path(item.key).name)
        shutil.copyfile(inputs.store.path / META_FILE, store_dir / META_FILE)
    os.replace(building, root)
    return TrainingSet(root)


def _assemble_remote(inputs: TrainingInputs, root: Location) -> TrainingSet:
    """Server-side copies of the inputs under ``root``; its ``training_set.json``, written last,
    says it is complete (an object store has no atomic rename of a folder)."""
    marker = root / TRAINING_SET_FILE
    if not marker.is_file():
        for item in inputs.shards:
            copy_file(item.shard, root / "shards" / f"{item.key}.tar")
        files = {}
        if inputs.store is not None:
            folder = root / "embeddings" / inputs.store.fingerprint
            for name in [META_FILE] + [inputs.store.shard_path(item.key).name for item in inputs.shards]:
                copy_file(inputs.store_location / name, folder / name)
            files["embeddings"] = inputs.store.fingerprint
        write_json(marker, {"training_id": inputs.identity.id, "shards": inputs.keys, **files})
    return TrainingSet(root)


def identity_of_training_set(config: FlameConfig, training_set: TrainingSet) -> TrainingIdentity:
    """The identity of a training on ``training_set`` (e.g. one pulled by DVC on another machine)."""
    side = training_side(config, training_set.shards, training_set.embeddings)
    return training_identity(config, shard_digests(training_set.shards), side.text_fingerprint, side.source_fingerprint)


def train(config: FlameConfig, training_set: TrainingSet, out_dir: str | Path, training_id: str, *,
          tags: dict[str, str] | None = None, run_name: str | None = None,
          trackers: tuple[Tracker, ...] = ()) -> dict[str, Any]:
    """Train on ``training_set`` into ``out_dir`` (``models/<training id>/``), continuing the
    training already there (same identity: the same data and weight-changing settings); tracked
    in MLflow when ``tracking.enabled``. ``training_id`` is the identity ``training_inputs`` gave
    the set: the training checks it is the one it computes itself."""
    out = location(out_dir)
    local_set = training_set.local()
    tags = {**(tags or {}), promotion.TAG_TRAINING_ID: training_id, "flame.checkpoint": str(out)}
    with checkpoint_workspace(out, training_id) as (work, publish_now):
        summary = train_tracked(config, local_set.shards, local_set.embeddings, work,
                                resume=checkpoint.has_checkpoint(work), tracking=config.tracking.enabled,
                                run_name=run_name, tags=tags, trackers=trackers, on_checkpoint=publish_now)
    summary["checkpoint"] = str(out)
    if summary.get("training_id") != training_id:
        raise FlameError(f"{training_set.root}: trained as {summary.get('training_id')}, but its inputs were "
                         f"identified as {training_id}: the training set changed while it was read")
    return summary


# ---- after training ------------------------------------------------------------------------


def evaluate(config: FlameConfig, checkpoint_dir: str | Path, out_file: str | Path,
             run_id: str | None = None) -> dict[str, Any]:
    """The checkpoint scored on ``eval.benchmarks``: the CLIP_benchmark-style JSON at ``out_file``
    with its plots beside it, and, given the training's MLflow ``run_id``, its metrics and files
    logged to that run. Returns the result with ``seconds``, ``result_file`` and ``plot_files``."""
    out_file = location(out_file)
    start = time.monotonic()
    model = load_model(local_checkpoint(checkpoint_dir))
    with staged_dir(out_file.parent) as folder:
        result = evaluate_benchmarks(model, config.eval.benchmarks, folder, config.eval,
                                     max_pixels=config.image.max_pixels)
        write_json(folder / out_file.name, result)
        plots = [p for r in result["results"] for p in r.get("plots", []) if (folder / p).is_file()]
        if run_id:
            metrics = {k: float(v) for k, v in result["summary"].items() if isinstance(v, (int, float))}
            with MlflowTracker(config, run_id=run_id) as tracker:
                tracker.log_evaluation(metrics, [folder / out_file.name, *(folder / p for p in plots)])
    return {**result, "seconds": round(time.monotonic() - start, 2), "result_file": out_file,
            "plot_files": [out_file.parent / p for p in plots]}


def register(config: FlameConfig, checkpoint_dir: str | Path, *, training_id: str | None = None,
             run_id: str | None = None, lineage: dict[str, str] | None = None) -> promotion.Decision:
    """Log the checkpoint as a stand-alone pyfunc (unless this training is registered already),
    register it as ``challenger`` with its lineage, and run the promotion gate."""
    return promotion.register_and_gate(config, None, checkpoint_dir=local_checkpoint(checkpoint_dir), run_id=run_id,
                                       training_id=training_id, lineage=lineage)


def local_checkpoint(checkpoint_dir: str | Path, names: tuple[str, ...] | list[str] = checkpoint.MODEL_FILES) -> Path:
    """A checkpoint folder's files ``names`` (default: the model's) as a local folder: a remote
    folder's through the cache, a local folder itself."""
    folder = location(checkpoint_dir)
    return fetch_tree(folder, list(names)) if is_url(folder) else Path(folder)


@contextmanager
def checkpoint_workspace(out: Location, training_id: str):
    """``(folder, publish)``: the local folder a training writes its checkpoints to, and what to
    call after each save. For a local ``out``, ``out`` itself (publishing is nothing); for a
    remote one, a private copy in the cache (named by the training's identity) of what is there
    already, so a training continues from the last checkpoint any machine published, and every
    checkpoint is published to ``out`` as soon as it is saved, and everything at the end.
    Under torch.distributed each rank has its own copy (ranks may share a machine) and rank 0,
    the one that saves, alone publishes."""
    if not is_url(out):
        yield Path(out), None
        return
    rank = int(os.environ.get("RANK", "0"))
    work = cache_dir("checkpoints") / training_id / f"rank-{rank}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if out.exists():
        copy_tree_to_local(out, work)

    def publish_now() -> None:
        publish_tree(work, out)

    yield work, publish_now
    if rank == 0:
        publish_now()
