"""``flame embed`` on the two-node Ray cluster (``text.distributor: ray``): the store equals a
one-process run's, the shards are spread over workers on both nodes, and a worker killed with
SIGKILL while it embeds costs only its shard in progress (real SmolLM2, real Ray processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from benchmarks.embed_scaling import write_shards
from flame.config import load_config, repo_root
from flame.text.embed import run_embedding
from flame.text.store import EmbeddingStore
from tests.fixtures.text import assert_same_store

pytestmark = [pytest.mark.slow, pytest.mark.services]

# Enough shards that a worker is still busy when the first one is written (each takes seconds).
SHARDS, PER_SHARD = 6, 10
WORKER_CLASS = "ShardEmbedWorker"


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    """Webdataset shards of the sample captions (5 per sample, the tiny profile's K), no images."""
    return write_shards(tmp_path_factory.mktemp("ray_embed_shards"), SHARDS, PER_SHARD)


@pytest.fixture(scope="module")
def one_process_store(shard_dir, tiny_encoder, tmp_path_factory) -> EmbeddingStore:
    summary = run_embedding(load_config(profile="tiny"), shard_dir, tmp_path_factory.mktemp("one_process"),
                            encoder=tiny_encoder, progress=False)
    assert summary["shards_done"] == SHARDS and summary["validation"]["ok"], summary
    return EmbeddingStore.open(summary["store"])


def _env(ray_cluster) -> dict[str, str]:
    return {**os.environ, **ray_cluster.env()}


def _cluster_params(path: Path, **text) -> Path:
    """params.yaml with a profile ``cluster``: the tiny one with ``text`` overridden."""
    params = yaml.safe_load((repo_root() / "params.yaml").read_text(encoding="utf-8"))
    params["profiles"]["cluster"] = {"extends": "tiny", "text": text}
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def _embed_cmd(shard_dir: Path, out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "flame", "embed", "--input", str(shard_dir), "--out", str(out), "--no-progress",
            *flags]


def _pid(worker: str) -> int:
    return int(worker.rsplit("/", 1)[1])


def test_two_workers_on_two_nodes_make_the_one_process_store(ray_cluster, shard_dir, one_process_store, tmp_path):
    # The distributor and the cluster come from the configuration, not from $RAY_ADDRESS.
    params = _cluster_params(tmp_path / "params.yaml", distributor="ray", workers=2,
                             cluster_address=ray_cluster.address)
    env = _env(ray_cluster)
    env.pop("RAY_ADDRESS")
    out = tmp_path / "emb"
    proc = subprocess.run(_embed_cmd(shard_dir, out, "--config", str(params), "--profile", "cluster"),
                          cwd=repo_root(), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # stdout holds the JSON result alone
    assert summary["shards_done"] == SHARDS and summary["validation"]["ok"]
    assert_same_store(EmbeddingStore.open(summary["store"]), one_process_store)
    workers = summary["workers"]
    assert sorted(workers) == one_process_store.shards()
    assert len({w.rsplit("/", 1)[0] for w in workers.values()}) == 2, workers  # both nodes
    assert len({_pid(w) for w in workers.values()}) == 2, workers
    alive = {node["raylet"]["nodeId"] for node in ray_cluster.alive_nodes()}
    assert {w.rsplit("/", 1)[0] for w in workers.values()} == alive


def _kill_a_busy_worker(proc: subprocess.Popen, store_root: Path, ray_cluster) -> tuple[int, set[int]]:
    """Once the first shard is written (every worker then has its next shard in hand), SIGKILL one
    worker's process. Returns the killed pid and the workers' pids before the kill."""
    from ray.util.state import list_actors

    deadline = time.monotonic() + 300
    while not list(store_root.glob("*/*.safetensors")):
        assert proc.poll() is None, "the run ended before any shard was written: " + proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no shard written in 300 s"
        time.sleep(0.05)
    actors = list_actors(address=ray_cluster.jobs_url, limit=1000,
                         filters=[("class_name", "=", WORKER_CLASS), ("state", "=", "ALIVE")])
    pids = {a.pid for a in actors}
    assert len(pids) == 2, actors
    victim = min(pids)
    assert proc.poll() is None, "the run ended before the kill"
    os.kill(victim, signal.SIGKILL)
    return victim, pids


def test_a_worker_killed_while_embedding_loses_only_its_shard(ray_cluster, shard_dir, one_process_store, tmp_path):
    out = tmp_path / "emb"
    proc = subprocess.Popen(_embed_cmd(shard_dir, out, "--distributor", "ray", "--workers", "2"),
                            cwd=repo_root(), env=_env(ray_cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        killed, before = _kill_a_busy_worker(proc, out, ray_cluster)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    # What Ray's raylet reports to the run (sent to its stderr): the kill landed mid-shard.
    assert "killed while executing a task" in stderr and f"Worker PID: {killed}" in stderr, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["shards_done"] == SHARDS and summary["validation"]["ok"]
    assert_same_store(EmbeddingStore.open(summary["store"]), one_process_store)
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)
    # The restarted worker (a new process) redid the killed one's shard; the other kept its own.
    pids = {_pid(w) for w in summary["workers"].values()}
    assert pids - before, summary["workers"]
    assert before - {killed} <= pids


def test_a_shard_whose_worker_dies_past_the_retries_fails_naming_it(ray_cluster, shard_dir, tmp_path):
    params = _cluster_params(tmp_path / "params.yaml", distributor="ray", workers=2, worker_retries=0)
    out = tmp_path / "emb"
    proc = subprocess.Popen(_embed_cmd(shard_dir, out, "--config", str(params), "--profile", "cluster"),
                            cwd=repo_root(), env=_env(ray_cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _kill_a_busy_worker(proc, out, ray_cluster)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, stderr[-3000:]
    assert stdout == ""
    error = stderr.strip().splitlines()
    failed = [line for line in error if line.startswith("flame embed: error: shard ")]
    assert failed and "text.worker_retries=0" in failed[0], stderr[-3000:]
    shard = failed[0].split("error: shard ", 1)[1].split(" ", 1)[0]
    assert shard in {f"{s:05d}" for s in range(SHARDS)}
    assert not (next(out.glob("*")) / f"{shard}.safetensors").exists()
