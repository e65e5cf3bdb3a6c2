"""Training as Ray Train workers (``python -m orchestration.ray_train``) on the two-node Ray
cluster of ``scripts/services.sh``, the training set and the checkpoints in the S3 bucket: a
worker killed with SIGKILL after a checkpoint is published is restarted by Ray
(FailureConfig), the training continues from that checkpoint, and it ends with the weights of
one process trained on the same batches. (That two undisturbed workers train like one process
is asserted by the whole chain, tests/test_orchestration_ray.py.)

Every training step here sees the whole training set as its one global batch (64 images, one
shard of 32 per worker), so two workers and one process train on exactly the same batches."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flame.app.pipeline import TrainingSet, identity_of_training_set
from flame.checkpoint import STATE_FILE, SUMMARY_FILE, WEIGHTS_FILE
from flame.config import load_config
from flame.locations import fetch, location, publish_tree
from tests.fixtures.clone import REPO
from tests.fixtures.train import write_synthetic_store

pytestmark = [pytest.mark.slow, pytest.mark.services]

WORKERS = 2
EPOCHS = 24  # one step each; long enough for a worker to be killed mid-training
# The tiny model of tests/fixtures/train.py. fp32, unclipped, AdamW's eps at 1e-3: as in
# tests/test_train_ddp.py, so that a different order of the same sums cannot flip a step.
OVERRIDES = {
    "image": {"img_size": 32, "patch_size": 8, "model_kwargs": {"depth": 2}},
    "train": {"epochs": EPOCHS, "batch_size": 64, "warmup_steps": 2, "workers": 0, "positives_per_image": 2,
              "log_every_steps": 1, "precision": "fp32", "eps": 1e-3, "grad_clip": None, "shuffle_buffer": 16,
              "checkpoint_every_steps": 1, "device": "cpu"},
    "tracking": {"enabled": False},
    "orchestration": {"ray_train": {"workers": WORKERS, "placement_strategy": "SPREAD", "max_failures": 1}},
}


def _env(services, ray_cluster, tmp: Path) -> dict:
    return {**os.environ, **services.env(), **ray_cluster.env(), "FLAME_CACHE": str(tmp / "cache"),
            "PYTHONPATH": str(REPO)}


def _command(module: str, training_set: str, training_id: str, out: str) -> list[str]:
    return [sys.executable, "-m", module, "--profile", "tiny", "--overrides-json", json.dumps(OVERRIDES),
            "--training-set", training_set, "--training-id", training_id, "--out", out]


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 420) -> dict:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert proc.returncode == 0, f"exit {proc.returncode}\n{log.read_text()[-6000:]}"
    return json.loads(out.strip().splitlines()[-1])


def _train(module: str, setup: dict, out: str, name: str) -> dict:
    log = setup["tmp"] / f"{name}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(_command(module, setup["set"], setup["id"], out), env=setup["env"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        return _finish(proc, log)


def _weights(folder: str) -> dict[str, torch.Tensor]:
    return load_file(fetch(location(folder) / WEIGHTS_FILE))


def _max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def bucket(services):
    """This process reaches the bucket as the trainings do (the services' S3 variables)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in services.aws_env.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="module")
def setup(services, bucket, ray_cluster, sample_shards, tmp_path_factory):
    """The training set (the sample shards, a synthetic embedding store) in a fresh prefix of the
    bucket, its training id, and the environment of the trainings."""
    tmp = tmp_path_factory.mktemp("ray_train")
    local = tmp / "set"
    (local / "shards").mkdir(parents=True)
    for tar in sorted(sample_shards.glob("*.tar")):
        shutil.copy(tar, local / "shards" / tar.name)
    write_synthetic_store(local / "embeddings", local / "shards")
    config = load_config(profile="tiny", overrides=OVERRIDES)
    training_id = identity_of_training_set(config, TrainingSet(local)).id
    prefix = services.unique_prefix("ray-train")
    publish_tree(local, location(f"{prefix}/set"))
    return {"set": f"{prefix}/set", "id": training_id, "prefix": prefix, "tmp": tmp,
            "env": _env(services, ray_cluster, tmp)}


@pytest.fixture(scope="module")
def one_process(setup) -> dict:
    """The reference: the same training in one process (orchestration.train_step, no Ray)."""
    out = f"{setup['prefix']}/one"
    return {"out": out, "summary": _train("orchestration.train_step", setup, out, "one")}


def _json(url: str) -> dict | list:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _alive_workers(jobs_url: str, driver_pid: int) -> list[dict]:
    """The live Ray Train workers of the Ray job whose driver is the process ``driver_pid``."""
    jobs = [j for j in _json(f"{jobs_url}/api/jobs/")
            if (j.get("driver_info") or {}).get("pid") == str(driver_pid) and j["status"] == "RUNNING"]
    if not jobs:
        return []
    query = urllib.parse.urlencode([("filter_keys", "job_id"), ("filter_predicates", "="),
                                    ("filter_values", jobs[0]["job_id"]), ("filter_keys", "class_name"),
                                    ("filter_predicates", "="), ("filter_values", "RayTrainWorker"),
                                    ("filter_keys", "state"), ("filter_predicates", "="), ("filter_values", "ALIVE"),
                                    ("detail", "true")])
    return _json(f"{jobs_url}/api/v0/actors?{query}")["data"]["result"]["result"]


def _published_step(out: str) -> int | None:
    """The step of the checkpoint published at ``out``, if any."""
    state = location(out) / STATE_FILE
    if not state.is_file():
        return None
    return int(torch.load(fetch(state), map_location="cpu", weights_only=True)["step"])


def test_a_worker_killed_mid_training_is_restarted_and_the_training_ends_as_one_process_does(setup, one_process,
                                                                                              ray_cluster):
    out = f"{setup['prefix']}/killed"
    log = setup["tmp"] / "killed.log"
    with log.open("w") as err:
        proc = subprocess.Popen(_command("orchestration.ray_train", setup["set"], setup["id"], out), env=setup["env"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
        deadline, victim = time.monotonic() + 300, None
        while victim is None:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-6000:]
            step = _published_step(out)
            workers = _alive_workers(ray_cluster.jobs_url, proc.pid) if step else []
            if len(workers) == WORKERS:
                victim = max(workers, key=lambda w: w["pid"])
                os.kill(victim["pid"], signal.SIGKILL)
            time.sleep(0.2)
        summary = _finish(proc, log)
    assert 1 <= step < EPOCHS, "the worker was killed once a checkpoint was published, before the end"
    assert summary["ray_starts"] == 2, "Ray restarted the workers once"
    assert victim["pid"] not in {w["pid"] for w in summary["ray_workers"]}
    resumed = json.loads(fetch(location(out) / SUMMARY_FILE).read_text())["resumed_from_step"]
    assert step <= resumed < EPOCHS, "the restarted workers continued from the last checkpoint"
    assert summary["steps"] == EPOCHS and summary["world_size"] == WORKERS
    assert summary["epoch_losses"] == pytest.approx(one_process["summary"]["epoch_losses"], rel=1e-5)
    assert _max_abs_difference(_weights(out), _weights(one_process["out"])) <= 1e-5
