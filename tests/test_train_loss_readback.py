"""The loss stays on the device between log steps: a step reads nothing back to the host unless
``train.nonfinite_check`` asks it to, and the loop reads the losses once per log step, checkpoint
and epoch end, logging the same values either way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flame.errors import FlameError
from flame.text.store import EmbeddingStore
from flame.train import run_training
from flame.train.step import TrainStep
from tests.fixtures.train import tiny_train_config

pytestmark = pytest.mark.slow

# 64 images, global batch 16: 4 steps per epoch, 8 in all. Logged at steps 1, 3 and 6; epochs end at 4 and 8.
CONFIG = dict(batch_size=16, loss="sigmoid", log_every_steps=3, device="cpu")
READ_POINTS = 5
READBACKS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.__int__,
             torch.Tensor.__bool__, torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.cpu}


class _Readbacks(torch.overrides.TorchFunctionMode):
    """Counts the calls that bring a tensor's value to the host, but those of the optimizer's step
    counters: torch keeps them on the host (unless capturable), so reading them syncs nothing."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        super().__init__()
        self.optimizer = optimizer
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READBACKS and not any(args[0] is slot.get("step") for slot in self.optimizer.state.values()):
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


class _StepLoss(torch.Tensor):
    """A step's returned loss, and every tensor computed from it: each readback of one is counted."""

    readbacks: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in READBACKS:
            cls.readbacks.append(func.__name__)
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.fixture
def counted_steps(monkeypatch):
    """Per step, the readbacks made inside it; the readbacks of the returned losses, in ``_StepLoss``."""
    inside: list[list[str]] = []
    step = TrainStep.__call__

    def counted(self, pixels, texts):
        with _Readbacks(self.optimizer) as mode:
            loss = step(self, pixels, texts)
        inside.append(mode.calls)
        return loss.as_subclass(_StepLoss)

    monkeypatch.setattr(TrainStep, "__call__", counted)
    _StepLoss.readbacks = []
    return inside


def _logged_losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["metrics"]["train/loss"] for r in records if "train/loss" in r.get("metrics", {})}


def test_losses_are_read_back_at_log_steps_and_epoch_ends_only(counted_steps, sample_shards, synthetic_store,
                                                                tmp_path):
    summaries, readbacks = {}, {}
    for check in ("log_steps", "every_step"):
        counted_steps.clear()
        _StepLoss.readbacks = []
        summaries[check] = run_training(tiny_train_config(nonfinite_check=check, **CONFIG), sample_shards,
                                        synthetic_store, tmp_path / check)
        readbacks[check] = (list(counted_steps), list(_StepLoss.readbacks))

    inside, of_losses = readbacks["log_steps"]
    assert inside == [[]] * 8  # no step waits for its own result
    assert of_losses == ["tolist"] * READ_POINTS
    inside, of_losses = readbacks["every_step"]
    assert inside == [["__float__", "__bool__"]] * 8  # the loss, then the gradient norm: both checked
    assert of_losses == ["tolist"] * READ_POINTS

    checked, unchecked = summaries["every_step"], summaries["log_steps"]
    assert (unchecked["nonfinite_check"], checked["nonfinite_check"]) == ("log_steps", "every_step")
    assert unchecked["steps"] == 8 and len(unchecked["losses"]) == 2
    for key in ("losses", "first_loss", "last_loss"):
        assert unchecked[key] == checked[key], key
    logged = _logged_losses(tmp_path / "log_steps")
    assert list(logged) == [1, 3, 6] and logged == _logged_losses(tmp_path / "every_step")
    want = load_file(str(tmp_path / "every_step" / "model.safetensors"))
    got = load_file(str(tmp_path / "log_steps" / "model.safetensors"))
    assert all(torch.equal(got[name], want[name]) for name in want)


def test_a_nan_found_at_a_log_step_stops_training_before_any_checkpoint_holds_it(sample_shards, synthetic_store,
                                                                                tmp_path):
    out = tmp_path / "run"
    config = dict(CONFIG, log_every_steps=4, nonfinite_check="log_steps")
    run_training(tiny_train_config(**config), sample_shards, synthetic_store, out, epochs=1)
    store_dir = Path(shutil.copytree(synthetic_store, tmp_path / "emb" / Path(synthetic_store).name))
    store = EmbeddingStore.open(store_dir)
    keys, emb = store.read("00000")
    emb = emb.float().clone()
    emb[0, :, 0] = float("nan")  # a sample of epoch 2's steps 5-8, same fingerprint and input digest
    store.write("00000", keys, emb, input_digest=store.input_digest("00000"))
    before = load_file(str(out / "model.safetensors"))

    with pytest.raises(FlameError, match=r"^training stopped: the loss or gradient norm is not finite at epoch 2, "
                                         r"one of steps 5-8; train\.nonfinite_check: log_steps looked only now.*"
                                         r"no checkpoint holds them, and the last good checkpoint in .* \(step 4\)"):
        run_training(tiny_train_config(**config), sample_shards, store_dir, out, resume=True)
    after = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert torch.load(out / "train_state.pt", weights_only=True)["step"] == 4
