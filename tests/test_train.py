"""The training loop on real img2dataset shards (data/sample slice) with a synthetic
embedding store: loss, checkpoints, exact resume, and bad input."""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import flame.model
from flame.digest import sha256_file
from flame.errors import FlameError
from flame.text.store import EmbeddingStore
from flame.tracking import NullTracker
from flame.train import run_training
from flame.train.identity import TrainingIdentity
from tests.fixtures.train import tiny_train_config, write_synthetic_store

pytestmark = pytest.mark.slow

# 64 images -> 4 steps per epoch. The sigmoid loss: its logit bias makes the loss fall within these 8
# steps even against the synthetic store's random texts; InfoNCE (tiny's) need not, and did not once.
CONFIG = dict(batch_size=16, loss="sigmoid")


def _params(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


@pytest.fixture(scope="module")
def two_epochs(sample_shards, synthetic_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("two_epochs")
    return out, run_training(tiny_train_config(**CONFIG), sample_shards, synthetic_store, out)


@pytest.fixture(scope="module")
def one_epoch(sample_shards, synthetic_store, tmp_path_factory):
    """Stopped after epoch 1 of a 2-epoch schedule."""
    out = tmp_path_factory.mktemp("one_epoch")
    return out, run_training(tiny_train_config(**CONFIG), sample_shards, synthetic_store, out, epochs=1)


def test_training_lowers_the_loss_and_writes_a_loadable_checkpoint(two_epochs, sample_shards):
    out, summary = two_epochs
    assert summary["checkpoint"] == str(out)
    assert summary["epochs"] == 2 and summary["steps"] == 8 and summary["steps_per_epoch"] == 4
    assert len(summary["losses"]) == 2
    assert summary["losses"][1] < summary["losses"][0]
    assert summary["skipped"] == {"corrupt_images": 0, "missing_embeddings": 0}
    assert summary["images_per_sec"] > 0 and 0 <= summary["data_wait_share"] < 1
    assert json.loads((out / "train_summary.json").read_text()) == summary

    model = flame.model.load(out)
    assert model.text_fingerprint == summary["text_fingerprint"] == "synthetic0000001"
    assert model.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 32)
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["step"] == 8 and state["epoch"] == 2
    assert {"optimizer", "scheduler", "rng"} <= set(state)
    # the training's identity: recorded in the train state, its id in the summary and model_config.json
    identity = TrainingIdentity.from_record(state)
    assert summary["training_id"] == identity.id == json.loads((out / "model_config.json").read_text())["training_id"]
    assert identity.data_digests == {path.stem: sha256_file(path) for path in sorted(sample_shards.glob("*.tar"))}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [m["metrics"]["train/loss"] for m in metrics if "train/loss" in m.get("metrics", {})]
    assert len(losses) == 8


def _assert_same_weights_and_optimizer(out: Path, reference: Path) -> None:
    got, want = _params(out), _params(reference)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=name)
    want_slots = torch.load(reference / "train_state.pt", weights_only=True)["optimizer"]["state"]
    got_slots = torch.load(out / "train_state.pt", weights_only=True)["optimizer"]["state"]
    assert got_slots.keys() == want_slots.keys()
    for idx, slot in want_slots.items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(got_slots[idx][key], slot[key], rtol=0, atol=1e-6, msg=f"{idx}.{key}")


def test_resume_after_one_epoch_equals_two_uninterrupted_epochs(two_epochs, one_epoch, sample_shards,
                                                                 synthetic_store, tmp_path):
    reference, ref_summary = two_epochs
    first, _ = one_epoch
    out = Path(shutil.copytree(first, tmp_path / "resumed"))
    # --epochs and the logging cadence change no weight: the same training resumes
    summary = run_training(tiny_train_config(log_every_steps=3, **CONFIG), sample_shards, synthetic_store, out,
                           epochs=2, resume=True)
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 8
    assert summary["losses"] == ref_summary["losses"]
    assert summary["training_id"] == ref_summary["training_id"]
    _assert_same_weights_and_optimizer(out, reference)


class _Interrupted(Exception):
    pass


class _InterruptAtStep(NullTracker):
    """Stops a training run (as a kill would) when asked to log the training metrics of ``step``."""

    def __init__(self, step: int):
        self.step = step

    def log_metrics(self, metrics, step=None):
        if step == self.step and "train/loss" in metrics:
            raise _Interrupted(f"interrupted at step {step}")


def test_resume_mid_epoch_equals_an_uninterrupted_run(two_epochs, sample_shards, synthetic_store, tmp_path):
    reference, ref_summary = two_epochs
    config = tiny_train_config(checkpoint_every_steps=2, **CONFIG)  # saves at steps 2, 4 (epoch end), 6
    out = tmp_path / "run"
    with pytest.raises(_Interrupted):
        run_training(config, sample_shards, synthetic_store, out, tracker=_InterruptAtStep(7))
    saved = torch.load(out / "train_state.pt", weights_only=True)
    assert (saved["step"], saved["epoch"], saved["step_in_epoch"]) == (6, 1, 2)  # inside epoch 2 of 4 steps

    summary = run_training(config, sample_shards, synthetic_store, out, resume=True)
    assert summary["resumed_from_step"] == 6 and summary["steps"] == 8 and summary["epochs"] == 2
    assert summary["losses"] == ref_summary["losses"]
    _assert_same_weights_and_optimizer(out, reference)


def test_a_kill_between_the_two_writes_of_a_save_resumes_from_the_train_state(two_epochs, one_epoch, sample_shards,
                                                                            synthetic_store, tmp_path):
    """The model files of a later save landed, its train state did not, and the metrics log ran
    ahead and ends in a torn line: the resume starts from the train state's step and logs each
    step once."""
    reference, ref_summary = two_epochs
    first, _ = one_epoch
    out = Path(shutil.copytree(first, tmp_path / "killed"))
    for name in ("model.safetensors", "model_config.json"):
        shutil.copy(reference / name, out / name)  # step 8's model next to step 4's train state
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 5, "metrics": {"train/loss": 123.0}}) + "\n" + '{"step": 6, "metr')

    summary = run_training(tiny_train_config(**CONFIG), sample_shards, synthetic_store, out, resume=True)
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 8
    assert summary["losses"] == ref_summary["losses"]
    _assert_same_weights_and_optimizer(out, reference)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    loss_steps = [r["step"] for r in records if "train/loss" in r.get("metrics", {})]
    assert loss_steps == list(range(1, 9))
    assert all(r["metrics"]["train/loss"] != 123.0 for r in records if "train/loss" in r.get("metrics", {}))


def test_existing_checkpoint_needs_resume(one_epoch, sample_shards, synthetic_store):
    out, _ = one_epoch
    with pytest.raises(FlameError, match="already holds a training checkpoint; pass --resume"):
        run_training(tiny_train_config(**CONFIG), sample_shards, synthetic_store, out)


def test_resume_against_another_text_encoder_is_refused(one_epoch, sample_shards, tmp_path):
    out, _ = one_epoch
    other = write_synthetic_store(tmp_path / "emb", sample_shards, fingerprint="otherencoder0002").path
    with pytest.raises(FlameError, match="refusing to resume.*fingerprint synthetic0000001.*has otherencoder0002"):
        run_training(tiny_train_config(**CONFIG), sample_shards, other, out, resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(one_epoch, sample_shards, synthetic_store, tmp_path):
    first, _ = one_epoch
    out = Path(shutil.copytree(first, tmp_path / "run"))
    store_dir = Path(shutil.copytree(synthetic_store, tmp_path / "emb" / Path(synthetic_store).name))
    store = EmbeddingStore.open(store_dir)
    keys, emb = store.read("00000")
    emb = emb.float().clone()
    emb[0, :, 0] = float("nan")  # one poisoned sample (every positive, whichever m are drawn), same fingerprint
    store.write("00000", keys, emb, input_digest=store.input_digest("00000"))
    before = _params(out)

    with pytest.raises(FlameError, match=r"non-finite|loss is nan") as err:
        run_training(tiny_train_config(**CONFIG), sample_shards, store_dir, out, resume=True)
    assert "last good checkpoint" in str(err.value) and "(step 4)" in str(err.value)
    after = _params(out)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert torch.load(out / "train_state.pt", weights_only=True)["step"] == 4
    flame.model.load(out)


def _corrupt_first_image(src: Path, dst: Path) -> str:
    """Copy a tar shard, replacing its first image's bytes with garbage; returns that key."""
    bad_key = None
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin:
            data = tin.extractfile(member).read() if member.isfile() else None
            if bad_key is None and member.name.endswith(".jpg"):
                bad_key = member.name.split(".")[0]
                data = b"\xff\xd8 this is not a jpeg"
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data) if data is not None else None)
    return bad_key


@pytest.fixture
def bad_shards(sample_shards, tmp_path):
    """The sample shards with one undecodable image in 00000.tar."""
    out = tmp_path / "shards"
    shutil.copytree(sample_shards, out, ignore=shutil.ignore_patterns("00000.tar"))
    _corrupt_first_image(sample_shards / "00000.tar", out / "00000.tar")
    return out


def test_missing_embeddings_are_an_error_naming_examples(bad_shards, tmp_path):
    store = write_synthetic_store(tmp_path / "emb", bad_shards, drop_keys=3).path
    with pytest.raises(FlameError, match=r"3 samples in .* have no embeddings .*e\.g\. 00001/"):
        run_training(tiny_train_config(**CONFIG), bad_shards, store, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_corrupt_images_and_missing_embeddings_are_skipped_and_counted(bad_shards, tmp_path, caplog):
    store = write_synthetic_store(tmp_path / "emb", bad_shards, drop_keys=3).path
    config = tiny_train_config(missing_embeddings="skip", **CONFIG)
    with caplog.at_level(logging.WARNING, logger="flame.train"):
        summary = run_training(config, bad_shards, store, tmp_path / "out", epochs=1)
    assert summary["skipped"] == {"corrupt_images": 1, "missing_embeddings": 3}
    # one line per kind of skip
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warnings if "undecodable" in w] == [
        "skipped 1 undecodable image(s) in each epoch (skipped.corrupt_images in the summary)"]
    assert len([w for w in warnings if "without embeddings" in w]) == 1
    assert summary["samples"] == 61
    assert summary["steps"] == 3  # 32 - 1 corrupt and 32 - 3 missing -> 31 + 29 usable -> 3 full batches
    flame.model.load(tmp_path / "out")


def test_attention_auto_takes_the_math_kernel_on_a_cpu_and_every_kernel_trains_alike(
        sample_shards, synthetic_store, tmp_path):
    from flame.train.attention import attention_kernel

    cpu = torch.device("cpu")
    with attention_kernel("auto", cpu):
        assert torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
    with attention_kernel("default", cpu):
        assert torch.backends.cuda.flash_sdp_enabled()
    losses = {}
    for kernel in ("math", "default"):
        config = tiny_train_config(epochs=1, precision="fp32", attention=kernel)
        losses[kernel] = run_training(config, sample_shards, synthetic_store, tmp_path / kernel)["losses"]
    assert losses["math"] == pytest.approx(losses["default"], rel=1e-4)


def test_resume_against_changed_data_or_configuration_is_refused(one_epoch, sample_shards, synthetic_store, tmp_path):
    first, _ = one_epoch
    out = Path(shutil.copytree(first, tmp_path / "run"))
    changed = tmp_path / "shards"
    shutil.copytree(sample_shards, changed, ignore=shutil.ignore_patterns("00001.tar"))
    _corrupt_first_image(sample_shards / "00001.tar", changed / "00001.tar")  # same keys, other bytes
    # embeddings of the changed shards under the same store fingerprint: only the data differs
    store = write_synthetic_store(tmp_path / "emb", changed).path
    with pytest.raises(FlameError, match=r"refusing to resume .*the data changed since it was trained: "
                                         r"00001 changed \(sha256 \w+\.\.\. -> \w+\.\.\.\)"):
        run_training(tiny_train_config(**CONFIG), changed, store, out, resume=True)

    with pytest.raises(FlameError, match=r"the configuration changed since it was trained: "
                                         r"train\.lr: 0\.0005 -> 0\.001\."):
        run_training(tiny_train_config(lr=1e-3, **CONFIG), sample_shards, synthetic_store, out, resume=True)

    state = torch.load(out / "train_state.pt", weights_only=True)
    del state["data_digests"]  # as a train state that never recorded its data
    torch.save(state, out / "train_state.pt")
    with pytest.raises(FlameError, match="does not record the data it was trained on"):
        run_training(tiny_train_config(**CONFIG), sample_shards, synthetic_store, out, resume=True)


def test_progress_goes_into_the_train_state_under_the_keys_checkpoints_have_always_had():
    from flame.train.progress import TrainProgress

    progress = TrainProgress()
    progress.record_step()
    progress.record_losses(epoch_loss_sum=3.0, last_loss=3.0)
    progress.record_step()
    progress.record_losses(epoch_loss_sum=5.0, last_loss=2.0)
    progress.end_epoch(skipped_corrupt=1)
    progress.record_step()
    progress.record_losses(epoch_loss_sum=1.0, last_loss=1.0)
    state = progress.to_state()
    assert state == {"step": 3, "epoch": 1, "step_in_epoch": 1, "epoch_loss_sum": 1.0, "losses": [2.5],
                     "first_loss": 3.0, "last_loss": 1.0, "skipped_corrupt": 1, "epoch_corrupt": 0}
    assert TrainProgress.from_state({**state, "model": {}, "steps_per_epoch": 4}) == progress
