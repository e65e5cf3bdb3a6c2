"""Training under DDP: real gloo processes configured through the environment variables torchrun
sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*), with every torch.distributed collective guarded
(``collectives_on``) so that a tensor NCCL would reject fails here, on the CPU, too."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils.weak import WeakTensorKeyDictionary

import flame.model
from flame.text_modes import training_side
from flame.train import run_training
from flame.train.distributed import all_gather_with_grad, all_reduce, all_reduce_int, cleanup, init_distributed
from flame.train.loop import _Trainer
from tests.fixtures.train import STORE_D, tiny_train_config

pytestmark = pytest.mark.slow

COLLECTIVES = (
    "all_reduce", "all_reduce_coalesced", "all_gather", "all_gather_into_tensor", "all_gather_coalesced",
    "all_gather_single", "_all_gather_base", "broadcast", "reduce", "reduce_scatter", "reduce_scatter_tensor",
    "reduce_scatter_single", "_reduce_scatter_base", "all_to_all", "all_to_all_single", "gather",
    "gather_single", "scatter", "send", "recv", "isend", "irecv",
)
FACTORIES = {
    torch.tensor, torch.as_tensor, torch.scalar_tensor, torch.asarray, torch.zeros, torch.ones, torch.empty,
    torch.full, torch.arange, torch.linspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm,
}


class WrongDevice(AssertionError):
    """A collective was given a tensor that is not on the process's device."""


def _target_device(*args, copy=False, **kwargs) -> torch.device | None:
    return torch._C._nn._parse_to(*args, **kwargs)[0]


class _HostTensors(TorchFunctionMode):
    """The tensors that would stay on the host if the process computed on a GPU: made by a factory
    without ``device=`` (``torch.tensor(n)``), moved with ``.cpu()``, or computed from such tensors
    alone. Here the process's device is the CPU as well, so ``tensor.device`` cannot tell them apart."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.tensors = WeakTensorKeyDictionary()

    def __contains__(self, tensor: torch.Tensor) -> bool:
        return tensor in self.tensors

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in FACTORIES:
            host = kwargs.get("device") is None
        elif func is torch.Tensor.cpu:
            host = True
        elif func is torch.Tensor.to and (to := _target_device(*args[1:], **kwargs)) is not None:
            host = to != self.device
        else:
            inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            host = bool(inputs) and all(t in self for t in inputs)
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                if host:
                    self.tensors[t] = True
                else:
                    self.tensors.pop(t, None)
        return out


def _guarded(name: str, collective, device: torch.device, host: _HostTensors):
    @functools.wraps(collective)
    def guarded(*args, **kwargs):
        for t in pytree.tree_leaves((args, kwargs)):
            if not isinstance(t, torch.Tensor):
                continue
            if t.device != device:
                raise WrongDevice(f"torch.distributed.{name} was given a tensor on {t.device}, "
                                  f"but this process computes on {device}")
            if t in host:
                raise WrongDevice(f"torch.distributed.{name} was given a host tensor (made without device=, or "
                                  f"moved with .cpu()): on a GPU it would be on cpu, not on the process's device")
        return collective(*args, **kwargs)

    return guarded


@contextlib.contextmanager
def collectives_on(device: torch.device):
    """Every torch.distributed collective (also those torch.distributed.nn calls) raises WrongDevice when
    one of its tensors is not on ``device``, or would not be there if ``device`` were a GPU."""
    host = _HostTensors(device)
    with contextlib.ExitStack() as stack:
        for module in (dist, c10d):
            for name in COLLECTIVES:
                if hasattr(module, name):
                    guard = _guarded(name, getattr(module, name), device, host)
                    stack.enter_context(mock.patch.object(module, name, guard))
        stack.enter_context(host)
        yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, world: int, *args) -> None:
    # fork: the children reuse the imported modules (CPU only, one thread each).
    mp.start_processes(fn, args=(world, _free_port(), *args), nprocs=world, join=True, start_method="fork")


def _as_torchrun_would(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)


def _probe(rank, world, port, results):
    _as_torchrun_would(rank, world, port)
    ctx = init_distributed(torch.device("cpu"))
    raised = {}
    try:
        with collectives_on(ctx.device):
            features = torch.ones(2, 3, device=ctx.device, requires_grad=True)
            all_gather_with_grad(features, ctx).sum().backward()
            passed = {
                "all_reduce_int": all_reduce_int(rank + 1, ctx),
                "all_reduce": float(all_reduce(torch.tensor(rank + 1.0), ctx)),
                "all_gather_with_grad": features.grad.tolist(),
            }
            for what, call in {
                "meta": lambda: dist.all_reduce(torch.zeros(1, device="meta")),
                "host": lambda: dist.all_reduce(torch.tensor(1)),
                "cpu_copy": lambda: dist.broadcast(torch.ones(1, device=ctx.device).cpu(), src=0),
                "loss_gather": lambda: all_gather_with_grad(torch.ones(2, 3, requires_grad=True), ctx),
            }.items():
                try:
                    call()
                except WrongDevice as exc:
                    raised[what] = str(exc)
    finally:
        cleanup(ctx)
    (Path(results) / f"rank{rank}.json").write_text(json.dumps({"passed": passed, "raised": raised}))


def test_collective_guard_rejects_tensors_off_the_process_device(tmp_path):
    _spawn(_probe, 2, str(tmp_path))
    for rank in range(2):
        probe = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert probe["passed"] == {"all_reduce_int": 3, "all_reduce": 3.0, "all_gather_with_grad": [[2.0] * 3] * 2}
        raised = probe["raised"]
        assert set(raised) == {"meta", "host", "cpu_copy", "loss_gather"}
        assert raised["meta"] == "torch.distributed.all_reduce was given a tensor on meta, but this process computes on cpu"
        assert raised["host"].startswith("torch.distributed.all_reduce was given a host tensor")
        assert raised["cpu_copy"].startswith("torch.distributed.broadcast was given a host tensor")
        assert raised["loss_gather"].startswith("torch.distributed.all_gather was given a host tensor")


def _run_training(rank, world, port, shards, store, out, results):
    _as_torchrun_would(rank, world, port)
    with collectives_on(torch.device("cpu")):
        summary = run_training(tiny_train_config(batch_size=16, epochs=1, device="cpu"), shards, store, out)
    (Path(results) / f"rank{rank}.json").write_text(json.dumps(summary))


def test_two_process_ddp_training(sample_shards, synthetic_store, tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    results.mkdir()
    _spawn(_run_training, 2, str(sample_shards), str(synthetic_store), str(out), str(results))
    for rank in range(2):
        summary = json.loads((results / f"rank{rank}.json").read_text())
        # Two shards of 32 images, one per rank; global batch 16 = 8 per rank -> 4 steps.
        assert summary["world_size"] == 2 and summary["steps"] == 4 and summary["samples"] == 64
        assert summary["device"] == "cpu" and summary["skipped"]["corrupt_images"] == 0
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["step"] == 4
    assert flame.model.load(out).encode_image(torch.randn(1, 3, 32, 32)).shape == (1, 32)


GLOBAL_BATCH, STEPS = 8, 3


def _train_steps(rank, world, port, shards, store, loss, results):
    """STEPS steps of the trainer's own TrainStep, this rank taking its part of the same global batches."""
    _as_torchrun_would(rank, world, port)
    ctx = init_distributed(torch.device("cpu"))
    # Unclipped, so that the gradients' scale shows. AdamW's eps at 1e-3, not 1e-8: a gradient that is
    # zero up to rounding (the attention key bias's) would otherwise step by lr times that rounding's sign.
    config = tiny_train_config(batch_size=GLOBAL_BATCH, precision="fp32", loss=loss, eps=1e-3, grad_clip=None)
    try:
        with collectives_on(ctx.device):
            trainer = _Trainer(config, training_side(config, shards, store), Path(shards),
                               Path(results) / f"out-{world}-{rank}", None, False, None, ctx)
            trainer._prepare_data()
            trainer._build_model(None)
            mine = slice(rank * trainer.local_batch, (rank + 1) * trainer.local_batch)
            generator = torch.Generator().manual_seed(1)
            losses, lrs = [], []
            for _ in range(STEPS):
                pixels = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=generator)
                texts = F.normalize(torch.randn(GLOBAL_BATCH, trainer.cfg.positives_per_image, STORE_D,
                                                generator=generator), dim=-1)
                lrs.append(trainer.optimizer.param_groups[0]["lr"])
                losses.append(float(trainer.train_step(pixels[mine], texts[mine])))
    finally:
        cleanup(ctx)
    params = dict(trainer.model.named_parameters())
    torch.save({
        "losses": losses, "lrs": lrs, "params": {name: p.detach() for name, p in params.items()},
        # AdamW's steps hardly depend on the gradients' scale; its running mean of them does.
        "grad_means": {name: trainer.optimizer.state[p]["exp_avg"] for name, p in params.items() if p.requires_grad},
    }, Path(results) / f"{world}-{rank}.pt")


def _assert_close_in_norm(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        error = torch.linalg.vector_norm(actual[name] - value)
        assert error <= 1e-5 * torch.linalg.vector_norm(value), f"{what} {name}: off by {error:.2e} (L2)"


@pytest.mark.parametrize("loss", ["sigmoid", "infonce"])
def test_two_processes_train_like_one_on_the_same_global_batch(loss, sample_shards, synthetic_store, tmp_path):
    for world in (1, 2):
        _spawn(_train_steps, world, str(sample_shards), str(synthetic_store), loss, str(tmp_path))
    one = torch.load(tmp_path / "1-0.pt", weights_only=True)
    assert len(set(one["losses"])) == STEPS and one["lrs"][0] > 0
    for rank in range(2):
        two = torch.load(tmp_path / f"2-{rank}.pt", weights_only=True)
        assert two["lrs"] == one["lrs"]
        assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
        _assert_close_in_norm(two["params"], one["params"], "parameter")
        _assert_close_in_norm(two["grad_means"], one["grad_means"], "gradient mean of")
