"""run_training under DDP: 2 CPU processes with gloo, configured through the same
environment variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import flame.model
from tests.fixtures.train import tiny_train_config

pytestmark = pytest.mark.slow


def _rank(rank, world, port, shards, store, out, results):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from flame.train import run_training

    summary = run_training(tiny_train_config(batch_size=16, epochs=1), shards, store, out)
    with open(os.path.join(results, f"rank{rank}.json"), "w") as fh:
        json.dump(summary, fh)


def test_two_process_ddp_training(sample_shards, synthetic_store, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out, results = tmp_path / "out", tmp_path / "results"
    results.mkdir()
    # fork: the children reuse the imported modules (CPU only, one thread each).
    mp.start_processes(_rank, args=(2, port, str(sample_shards), str(synthetic_store), str(out), str(results)),
                       nprocs=2, join=True, start_method="fork")
    summaries = [json.loads((results / f"rank{r}.json").read_text()) for r in range(2)]
    for summary in summaries:
        # Two shards of 32 images, one per rank; global batch 16 = 8 per rank -> 4 steps.
        assert summary["world_size"] == 2 and summary["steps"] == 4 and summary["samples"] == 64
    # Every rank logs the same all-reduced loss.
    assert summaries[0]["losses"] == summaries[1]["losses"]
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["step"] == 4
    assert flame.model.load(out).encode_image(torch.randn(1, 3, 32, 32)).shape == (1, 32)
