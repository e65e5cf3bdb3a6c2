"""Training across nodes with torchrun: two launchers (``--nnodes=2``, one rank each) meet through a
c10d rendezvous on 127.0.0.1 and train, through the ``flame train`` command, on the same shards into
one checkpoint folder, to the weights one process reaches on the same global batches. A rank killed
with SIGKILL is restarted by torchrun (``--max-restarts=1``), every rank resumes from the last
checkpoint, and the job ends with the weights of the undisturbed run."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.utils.data import IterableDataset

from flame import checkpoint
from flame.text_modes import training_side
from flame.train.batches import ShardBatches, shards_of_rank
from flame.train.distributed import init_distributed
from flame.train.loop import RESTARTABLE_TORCHRUN_ENV, _Trainer
from tests.fixtures.train import tiny_train_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NODES = 2
# fp32 and an AdamW eps well above rounding, as in test_train_ddp: the 2-rank gradients differ from
# one process's by rounding only, which must not flip the sign of a near-zero gradient's step.
# 64 images, global batch 16: 4 steps per epoch, 24 in all; a checkpoint every 2 steps.
TRAIN = dict(batch_size=16, epochs=6, loss="sigmoid", precision="fp32", eps=1e-3, grad_clip=None, device="cpu",
             checkpoint_every_steps=2, log_every_steps=4)
STEPS = 24
LAUNCH_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    """A params.yaml whose one profile is the tiny test training's configuration."""
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    profile = tiny_train_config(**TRAIN).model_dump(mode="json")
    path.write_text(yaml.safe_dump({"profile": "torchrun", "profiles": {"torchrun": profile}}), encoding="utf-8")
    return path


def _launch(params: Path, shards: Path, store: Path, out: Path, port: int, run_id: str, logs: Path,
            max_restarts: int = 0) -> list[subprocess.Popen]:
    """The launchers of NODES nodes, as each node would start its own, with the same command."""
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nnodes={NODES}", "--nproc-per-node=1",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={run_id}",
        "--local-addr=127.0.0.1", f"--max-restarts={max_restarts}", "--monitor-interval=0.5",
        "-m", "flame", "train", "--config", str(params), "--no-tracking",
        "--shards", str(shards), "--embeddings", str(store), "--out", str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if max_restarts:
        env.update(RESTARTABLE_TORCHRUN_ENV)
    logs.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen(command, cwd=ROOT, env=env, stdout=(logs / f"node{node}.log").open("w"),
                             stderr=subprocess.STDOUT, start_new_session=True) for node in range(NODES)]


def _wait(launchers: list[subprocess.Popen], logs: Path) -> list[int]:
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        return [launcher.wait(timeout=max(1.0, deadline - time.monotonic())) for launcher in launchers]
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()


def _log_tails(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("*.log")))


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[name] - b[name]).abs().max()) for name in a)


class _GlobalBatches(IterableDataset):
    """What the ranks of a NODES-process training read, one global batch per step: every rank's
    batch, concatenated in rank order."""

    def __init__(self, ranks: list[ShardBatches]):
        self.ranks = ranks

    def set_epoch(self, epoch: int) -> None:
        for rank in self.ranks:
            rank.set_epoch(epoch)

    def __iter__(self):
        for parts in zip(*self.ranks):
            yield {"pixels": torch.cat([p["pixels"] for p in parts]), "texts": torch.cat([p["texts"] for p in parts]),
                   "keys": [k for p in parts for k in p["keys"]],
                   "skipped_corrupt": sum(p["skipped_corrupt"] for p in parts),
                   "skipped_missing": sum(p["skipped_missing"] for p in parts)}


class _OneProcessOnTheRanksBatches(_Trainer):
    """The trainer in one process, fed the global batches the NODES ranks read."""

    def _prepare_data(self) -> None:
        super()._prepare_data()
        ranks = []
        for rank in range(NODES):
            view = copy.copy(self.dataset)
            view.shards = shards_of_rank(self.plan.shards, rank, NODES)
            view.rank, view.batch_size = rank, self.local_batch // NODES
            ranks.append(view)
        self.dataset = _GlobalBatches(ranks)


@pytest.fixture(scope="module")
def one_process(sample_shards, synthetic_store, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("one_process")
    config = tiny_train_config(**TRAIN)
    trainer = _OneProcessOnTheRanksBatches(config, training_side(config, sample_shards, synthetic_store),
                                           Path(sample_shards), out, None, False, None,
                                           init_distributed(torch.device("cpu")))
    summary = trainer.run()
    assert summary["world_size"] == 1 and summary["steps"] == STEPS
    return load_file(str(out / checkpoint.WEIGHTS_FILE))


@pytest.fixture(scope="module")
def two_nodes(params_file, sample_shards, synthetic_store, tmp_path_factory) -> Path:
    """The undisturbed torchrun training across two nodes; its checkpoint folder."""
    work = tmp_path_factory.mktemp("two_nodes")
    out, logs = work / "out", work / "logs"
    started = time.monotonic()
    codes = _wait(_launch(params_file, sample_shards, synthetic_store, out, _free_port(), uuid.uuid4().hex, logs),
                  logs)
    assert codes == [0] * NODES, _log_tails(logs)
    print(f"two nodes trained {STEPS} steps in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return out


def test_two_torchrun_nodes_train_to_the_weights_of_one_process(two_nodes, one_process):
    summary = checkpoint.read_summary(two_nodes)
    assert summary["world_size"] == NODES and summary["steps"] == STEPS and summary["device"] == "cpu"
    assert summary["resumed_from_step"] is None
    assert _max_abs_diff(load_file(str(two_nodes / checkpoint.WEIGHTS_FILE)), one_process) <= 1e-5


def _worker_of(launcher: subprocess.Popen) -> psutil.Process:
    """The training process torchrun started (its one local rank)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = [p for p in psutil.Process(launcher.pid).children(recursive=True)
                   if "flame" in p.cmdline() and "train" in p.cmdline()]
        if workers:
            return workers[0]
        time.sleep(0.1)
    raise AssertionError("torchrun started no training process")


def test_a_rank_killed_is_restarted_and_resumes_to_the_undisturbed_weights(params_file, sample_shards,
                                                                          synthetic_store, two_nodes, tmp_path):
    out, logs = tmp_path / "out", tmp_path / "logs"
    launchers = _launch(params_file, sample_shards, synthetic_store, out, _free_port(), uuid.uuid4().hex, logs,
                        max_restarts=1)
    try:
        victim = _worker_of(launchers[1])
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not checkpoint.has_checkpoint(out):
            assert time.monotonic() < deadline and victim.is_running(), _log_tails(logs)
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        killed_after = torch.load(out / checkpoint.STATE_FILE, weights_only=True)["step"]
    finally:
        codes = _wait(launchers, logs)
    assert killed_after < STEPS
    assert codes == [0] * NODES, _log_tails(logs)

    summary = checkpoint.read_summary(out)
    assert summary["steps"] == STEPS and summary["world_size"] == NODES
    # The restarted ranks continued the checkpoint: some step at or after the one seen at the kill.
    assert summary["resumed_from_step"] is not None and killed_after <= summary["resumed_from_step"] < STEPS
    undisturbed = load_file(str(two_nodes / checkpoint.WEIGHTS_FILE))
    assert _max_abs_diff(load_file(str(out / checkpoint.WEIGHTS_FILE)), undisturbed) <= 1e-5
    assert summary["losses"] == checkpoint.read_summary(two_nodes)["losses"]
