"""One rule for the device a process computes on (``flame.device.local_device``), told to the
trainer through ``train.device``; the process group's backend follows that device, never the
presence of CUDA."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from flame.config import ConfigError, load_config
from flame.device import local_device
from flame.errors import FlameError
from flame.train import run_training
from flame.train.distributed import all_reduce, all_reduce_int, cleanup, init_distributed
from tests.fixtures.train import tiny_train_config

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("spelling", ["cpu", "auto"])
def test_cpu_gives_the_cpu_and_auto_the_gpu_of_this_process_if_there_is_one(spelling, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    expected = "cpu" if spelling == "cpu" or not CUDA else f"cuda:{3 % torch.cuda.device_count()}"
    assert local_device(spelling) == torch.device(expected)


@pytest.mark.skipif(CUDA, reason="this machine has CUDA: the GPU spellings resolve (test below)")
@pytest.mark.parametrize("spelling", ["cuda", "cuda:0"])
def test_a_gpu_asked_for_without_cuda_is_an_error_naming_the_setting(spelling):
    with pytest.raises(FlameError, match=rf"^train\.device='{spelling}', but this process sees no CUDA device"):
        local_device(spelling)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_the_gpu_of_this_process_is_its_local_rank_modulo_the_gpus_it_sees(monkeypatch):
    count = torch.cuda.device_count()
    monkeypatch.setenv("LOCAL_RANK", str(count + 1))
    assert local_device("auto") == local_device("cuda") == torch.device("cuda", 1 % count)
    assert local_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(FlameError, match=rf"train\.device='cuda:{count}', but this process sees {count} CUDA"):
        local_device(f"cuda:{count}")


@pytest.mark.parametrize("spelling", ["gpu", "CPU", "cuda:", "cuda:x", "mps", "cuda:0 "])
def test_a_misspelled_device_names_the_setting_and_its_value(spelling):
    expected = rf"^train\.device='{spelling}' is not a device: use auto, cpu, cuda or cuda:N$"
    with pytest.raises(FlameError, match=expected):
        local_device(spelling)
    with pytest.raises(FlameError, match=rf"^device='{spelling}' is not a device"):
        local_device(spelling, setting="device")
    with pytest.raises(ConfigError, match=rf"train\.device: Value error, '{spelling}' is not a device") as err:
        load_config(profile="tiny", overrides={"train": {"device": spelling}})
    assert "params.yaml" in str(err.value)


def test_the_device_setting_defaults_to_auto():
    assert load_config(profile="tiny").train.device == "auto"
    assert load_config(profile="tiny").train.nonfinite_check == "auto"


def test_a_process_group_needs_a_cpu_or_cuda_device():
    with pytest.raises(FlameError, match="cannot train on meta: a process group needs a cpu or cuda device"):
        init_distributed(torch.device("meta"))


def test_a_single_process_keeps_the_device_it_was_given(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed(torch.device("cpu"))
    assert (ctx.world_size, ctx.device, ctx.enabled, ctx.owns_group) == (1, torch.device("cpu"), False, False)
    assert not dist.is_initialized()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join_on_the_cpu(rank: int, world: int, port: int, results: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = init_distributed(local_device("cpu"))
    try:
        record = {
            "backend": dist.get_backend(), "device": str(ctx.device), "rank": ctx.rank, "world": ctx.world_size,
            "host_group": ctx.host_group is not None, "owns": ctx.owns_group,
            "sum": float(all_reduce(torch.tensor(rank + 1.0), ctx)), "count": all_reduce_int(rank + 1, ctx),
        }
    finally:
        cleanup(ctx)
    record["left"] = not dist.is_initialized()
    (Path(results) / f"rank{rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
def test_a_process_told_cpu_joins_a_gloo_group_whatever_the_machine_has(tmp_path):
    # On a machine with one GPU, "cpu" must still give gloo (NCCL would put both ranks on that GPU).
    mp.start_processes(_join_on_the_cpu, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    for rank in range(2):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record == {"backend": "gloo", "device": "cpu", "rank": rank, "world": 2, "host_group": False,
                          "owns": True, "sum": 3.0, "count": 3, "left": True}


@pytest.mark.slow
def test_the_trainer_trains_on_the_configured_device(sample_shards, synthetic_store, tmp_path):
    summary = run_training(tiny_train_config(epochs=1, batch_size=32, device="cpu"), sample_shards, synthetic_store,
                           tmp_path / "cpu")
    assert summary["device"] == "cpu" and summary["nonfinite_check"] == "every_step" and summary["steps"] == 2
    if not CUDA:
        with pytest.raises(FlameError, match=r"train\.device='cuda', but this process sees no CUDA device"):
            run_training(tiny_train_config(epochs=1, device="cuda"), sample_shards, synthetic_store, tmp_path / "gpu")
        assert not (tmp_path / "gpu").exists()
