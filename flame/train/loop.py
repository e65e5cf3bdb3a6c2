"""The training loop: a FlameModel's image tower (and, in the CLIP baseline, its text
tower) against the texts its text mode provides (``flame.text_modes``).

Single process, or DDP under torchrun. Resumable exactly from the checkpoint folder:
the data order, crops and positive picks depend only on (seed, epoch, key), and the
model, optimizer, scheduler and RNG come back from it (``flame.checkpoint``). The train
state records the training's identity (``flame.train.identity``: configuration, data, texts),
and a resume of another training is refused, naming what changed.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from flame import checkpoint as ckpt
from flame.config import FlameConfig
from flame.device import local_device
from flame.errors import FlameError
from flame.model import FlameModel, ModelConfig
from flame.text_modes import training_side
from flame.text_modes.base import TrainingSide
from flame.tracking import ConsoleTracker, JsonlTracker, MultiTracker, Tracker
from flame.train.batches import ShardBatches, shards_of_rank, steps_per_epoch
from flame.train.distributed import DistContext, all_reduce_int, barrier, cleanup, data_parallel, init_distributed
from flame.train.identity import TrainingIdentity, training_identity
from flame.train.losses import get_loss
from flame.train.optim import build_optimizer, build_scheduler
from flame.train.precision import resolve_precision
from flame.train.progress import DeviceLosses, TrainProgress
from flame.train.step import NonFiniteError, TrainStep

log = logging.getLogger(__name__)

def run_training(
    config: FlameConfig,
    shards_dir: str | Path,
    embeddings_dir: str | Path | None,
    out_dir: str | Path,
    epochs: int | None = None,
    resume: bool = False,
    tracker: Tracker | None = None,
    on_checkpoint: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train (or with ``resume`` continue) a FlameModel; returns the summary written to
    ``out_dir/train_summary.json`` (``checkpoint``, ``losses`` per epoch, ...).

    ``epochs`` is where to stop (default ``train.epochs``); the LR schedule spans
    ``max(epochs, train.epochs)`` epochs, so a run stopped early and resumed follows the
    same schedule as an uninterrupted one. ``on_checkpoint`` is called on rank 0 after each save
    (e.g. to publish the folder to object storage). With ``text.mode: clip`` (the CLIP baseline) a text
    tower is trained jointly on the shards' raw captions and ``embeddings_dir`` is not used.

    The process trains on ``train.device`` (``flame.device.local_device``), in the process group that
    torchrun or Ray Train describe in its environment. Under torchrun with ``--max-restarts`` above 0 it
    resumes its own checkpoint without ``resume``, as a restarted rank must (``restarts_allowed``).
    """
    ctx = init_distributed(local_device(config.train.device))
    try:
        mode = training_side(config, shards_dir, embeddings_dir)
        trainer = _Trainer(config, mode, Path(shards_dir), Path(out_dir), epochs, resume, tracker, ctx)
        trainer.on_checkpoint = on_checkpoint
        return trainer.run()
    finally:
        cleanup(ctx)


# What torchrun's environment needs for its restarts to work: by default the launchers share their
# rendezvous store with the ranks, and restarted ranks can read there the addresses of the ranks
# they replace, and fail to connect (pytorch/pytorch#135712).
RESTARTABLE_TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def restarts_allowed() -> bool:
    """Whether torchrun may restart this process (``--max-restarts`` above 0). A restarted process must
    continue the checkpoint its first run left, so then a checkpoint folder holding this same training
    is resumed without ``resume`` (the identity check still refuses another training's)."""
    allowed = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0
    if allowed and int(os.environ.get("RANK", "0")) == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        log.warning("torchrun may restart the ranks, but shares its rendezvous store with them: restarted ranks "
                    "can fail to connect to each other. Launch torchrun with %s",
                    " ".join(f"{k}={v}" for k, v in RESTARTABLE_TORCHRUN_ENV.items()))
    return allowed


class _Trainer:
    def __init__(self, config: FlameConfig, mode: TrainingSide, shards_dir: Path, out_dir: Path, epochs: int | None,
                 resume: bool, tracker: Tracker | None, ctx: DistContext):
        self.config, self.cfg, self.ctx = config, config.train, ctx
        self.mode = mode
        self.shards_dir, self.out_dir = shards_dir, out_dir
        mode.check(self.cfg)
        if self.cfg.batch_size % ctx.world_size:
            raise FlameError(f"train.batch_size={self.cfg.batch_size} is not divisible by {ctx.world_size} processes")
        self.local_batch = self.cfg.batch_size // ctx.world_size
        self.target_epochs = epochs or self.cfg.epochs
        self.resume = resume or restarts_allowed()
        self.external_tracker = tracker
        self.on_checkpoint: Callable[[], None] | None = None
        self.loss_fn = get_loss(self.cfg.loss)
        self.precision = resolve_precision(self.cfg.precision, ctx.device)
        check = self.cfg.nonfinite_check
        self.nonfinite_check = check if check != "auto" else "every_step" if ctx.device.type == "cpu" else "log_steps"

    # ---- set-up ---------------------------------------------------------------------
    def _prepare_data(self) -> None:
        self.plan = self.mode.plan(self.cfg)
        self.identity = training_identity(self.config, self.plan.digests, self.mode.text_fingerprint,
                                          self.mode.source_fingerprint)
        self.workers = self.cfg.workers
        self.steps_per_epoch = steps_per_epoch(self.plan, self.ctx.world_size, max(1, self.workers), self.local_batch)
        if self.steps_per_epoch == 0:
            raise FlameError(
                f"{self.plan.total} usable samples in {self.shards_dir} make no full batch of "
                f"{self.local_batch} per process and DataLoader worker; lower train.batch_size or train.workers"
            )
        self.dataset = ShardBatches(
            shards_of_rank(self.plan.shards, self.ctx.rank, self.ctx.world_size), self.mode.texts(self.cfg),
            self.config.image, batch_size=self.local_batch, positives=self.cfg.positives_per_image,
            crop_scale=self.cfg.crop_scale, seed=self.cfg.seed, shuffle_buffer=self.cfg.shuffle_buffer,
            rank=self.ctx.rank,
        )

    def _loader(self, epoch: int) -> DataLoader:
        self.dataset.set_epoch(epoch)
        return DataLoader(
            self.dataset, batch_size=None, num_workers=self.workers,
            prefetch_factor=4 if self.workers else None,
            pin_memory=self.ctx.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.cfg.seed + epoch),
        )

    def _load_resume_state(self) -> dict | None:
        exists = ckpt.has_checkpoint(self.out_dir)
        if exists and not self.resume:
            raise FlameError(
                f"{self.out_dir} already holds a training checkpoint; pass --resume to continue it, or choose another --out"
            )
        if not (exists and self.resume):
            if self.resume:
                log.info("no checkpoint in %s yet: starting from scratch", self.out_dir)
            return None
        state = ckpt.load_train_state(self.out_dir)
        self._check_same_training(state)
        return state

    def _check_same_training(self, state: dict) -> None:
        try:
            recorded = TrainingIdentity.from_record(state)
        except FlameError as exc:
            raise FlameError(f"refusing to resume {self.out_dir}: {exc}, so a resume cannot be checked; "
                             "train into another --out") from None
        if changes := self.identity.changes_since(recorded):
            raise FlameError(f"refusing to resume {self.out_dir}: {'. '.join(changes)}. Train into another --out, "
                             f"or resume with what it was trained on (this run reads {self.mode.source})")

    def _build_model(self, state: dict | None) -> None:
        torch.manual_seed(self.cfg.seed)
        text = self.mode.model_text()
        model_config = ModelConfig(embed_dim=text.embed_dim, image=self.config.image, text_mode=self.config.text.mode,
                                   text_fingerprint=text.fingerprint, text=text.text_config)
        self.model = FlameModel(model_config, logit_scale_init=self.cfg.logit_scale_init,
                                logit_bias_init=self.cfg.logit_bias_init)
        if state is not None:
            self.model.load_state_dict(state["model"], strict=True)
        # InfoNCE ignores the bias; DDP needs every trainable parameter to get a gradient.
        self.model.logit_bias.requires_grad_(self.cfg.loss == "sigmoid")
        if self.cfg.grad_checkpointing:
            self.model.visual.set_grad_checkpointing(True)
        self.model.to(self.ctx.device)
        self.horizon_epochs = max(self.cfg.epochs, self.target_epochs)
        if state is not None and state["horizon_epochs"] >= self.target_epochs:
            self.horizon_epochs = state["horizon_epochs"]
        elif state is not None:
            log.warning("extending the LR schedule from %d to %d epochs", state["horizon_epochs"], self.target_epochs)
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self.horizon_epochs * self.steps_per_epoch)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            ckpt.restore_rng(state["rng"])
        self.train_step = TrainStep(
            self.model, data_parallel(self.model, self.ctx),
            self.mode.features, self.optimizer, self.scheduler, self.loss_fn, self.precision, self.cfg.grad_clip,
            self.cfg.max_logit_scale, self.ctx, self.cfg.attention,
            check_every_step=self.nonfinite_check == "every_step",
        )

    def _tracker(self, resumed_from: int | None):
        if not self.ctx.is_main:
            return None
        jsonl = JsonlTracker(self.out_dir / ckpt.METRICS_FILE)
        if resumed_from is not None:
            jsonl.drop_after(resumed_from)  # those steps run again
        primary = self.external_tracker or ConsoleTracker(every=self.cfg.log_every_steps)
        return MultiTracker(primary, jsonl)

    # ---- the loop -------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self._prepare_data()
        state = self._load_resume_state()
        self._build_model(state)
        self.progress = TrainProgress() if state is None else TrainProgress.from_state(state)
        self.losses = DeviceLosses(self.ctx.device)
        if state is not None and state["steps_per_epoch"] != self.steps_per_epoch:
            raise FlameError(
                f"refusing to resume {self.out_dir}: the shards now give {self.steps_per_epoch} steps per epoch, "
                f"the checkpoint was made with {state['steps_per_epoch']} (data or batch size changed)"
            )
        progress = self.progress
        resumed_from = progress.step if state is not None else None
        tracker = self._tracker(resumed_from)
        if tracker:
            tracker.log_params(self.config.to_flat_dict())
            tracker.set_tags({"text_fingerprint": self.mode.text_fingerprint,
                              "embedding_store": self.mode.source_fingerprint})
        timing = {"images": 0, "seconds": 0.0, "wait": 0.0}
        status = "FAILED"
        try:
            while progress.epoch < self.target_epochs:
                self._run_epoch(tracker, timing)
            summary = self._summary(timing, resumed_from)
            if self.ctx.is_main:
                self._warn_skips()
                summary_file = ckpt.write_summary(self.out_dir, summary)
                tracker.log_metrics({f"train/{k}": float(summary[k]) for k in ("images_per_sec", "data_wait_share")
                                     if summary[k] is not None}, step=progress.step)
                tracker.log_artifact(summary_file)
            status = "FINISHED"
        finally:
            if tracker:
                tracker.trackers[-1].close(status)  # our JSONL; an external tracker is the caller's to close
        return summary

    def _next_batch(self, iterator, count: bool = True) -> dict | None:
        """The next non-empty batch (collecting skip counts on the way), or None at the end."""
        for batch in iterator:
            if count:
                self.progress.epoch_corrupt += batch["skipped_corrupt"]
            if batch["keys"]:
                return batch
        return None

    def _run_epoch(self, tracker, timing) -> None:
        progress, ctx = self.progress, self.ctx
        epoch = progress.epoch
        iterator = iter(self._loader(epoch))
        to_skip = progress.step_in_epoch
        for _ in range(to_skip):  # mid-epoch resume: replay the data order up to where we stopped
            if self._next_batch(iterator, count=False) is None:
                break
        if to_skip == 0:
            progress.epoch_corrupt = 0
        self.losses.start_epoch(progress.epoch_loss_sum)
        self.read_at = (progress.step, time.perf_counter())
        bar = tqdm(total=self.steps_per_epoch, initial=to_skip, desc=f"epoch {epoch + 1}/{self.target_epochs}",
                   unit="step", disable=not ctx.is_main, dynamic_ncols=True)
        last = time.perf_counter()
        while progress.step_in_epoch < self.steps_per_epoch:
            batch = self._next_batch(iterator)
            waited = time.perf_counter() - last
            if not all_reduce_int(int(batch is not None), ctx, op=torch.distributed.ReduceOp.MIN):
                break  # a rank ran short (undecodable images): every rank ends the epoch here
            lr = self.optimizer.param_groups[0]["lr"]
            try:
                loss = self.train_step(batch["pixels"], batch["texts"])
            except NonFiniteError as exc:
                self._fail_non_finite(str(exc), f"step {progress.step + 1}", "nothing was saved for this step")
            progress.record_step()
            self.losses.add(loss)
            now = time.perf_counter()
            timing["images"] += self.local_batch * ctx.world_size
            timing["seconds"] += now - last
            timing["wait"] += waited
            bar.update(1)
            # Only here is the loss read back from the device: at log steps (and step 1), before a
            # checkpoint and at the epoch's end. A readback waits for every queued step.
            log_now = progress.step % self.cfg.log_every_steps == 0 or progress.step == 1
            every = self.cfg.checkpoint_every_steps
            save_now = every and progress.step % every == 0 and progress.step_in_epoch < self.steps_per_epoch
            if log_now or save_now:
                img_s = self._read_losses()
            if log_now:
                bar.set_postfix(img_s=f"{img_s:.1f}", loss=f"{progress.last_loss:.4f}", lr=f"{lr:.2e}")
                if tracker:
                    scale, bias = torch.stack([self.model.logit_scale.detach().exp(),
                                               self.model.logit_bias.detach()]).tolist()
                    tracker.log_metrics({
                        "train/loss": progress.last_loss, "train/lr": lr, "train/img_per_s": img_s,
                        "train/logit_scale": scale, "train/logit_bias": bias, "train/epoch": epoch,
                    }, step=progress.step)
            if save_now:
                self._save()
            last = time.perf_counter()
        bar.close()
        while self._next_batch(iterator) is not None:  # collect skip counts of the remainder
            pass
        self._read_losses()
        progress.end_epoch(skipped_corrupt=all_reduce_int(progress.epoch_corrupt, ctx))
        if tracker:
            tracker.log_metrics({"train/epoch_loss": progress.losses[-1],
                                 "train/skipped_corrupt": progress.skipped_corrupt, "epoch": progress.epoch},
                                step=progress.step)
        self._save()

    def _read_losses(self) -> float:
        """Bring the losses of the steps since the last read to the host (one transfer), stop on a NaN/Inf
        among them (``train.nonfinite_check: log_steps``), and return the images per second since then."""
        progress = self.progress
        unchecked = self.train_step.take_unchecked()
        read = self.losses.read(*([unchecked] if unchecked is not None else []))
        since_step, since = self.read_at
        now = time.perf_counter()
        self.read_at = (progress.step, now)
        if read is None:
            return 0.0
        epoch_loss_sum, last_loss, watched = read
        if watched and not math.isfinite(watched[0]):
            first = since_step + 1
            steps = f"step {first}" if first == progress.step else f"one of steps {first}-{progress.step}"
            self._fail_non_finite(
                "the loss or gradient norm is not finite", steps,
                "train.nonfinite_check: log_steps looked only now, so the weights in memory may have taken those "
                "steps, but no checkpoint holds them")
        progress.record_losses(epoch_loss_sum, last_loss)
        return (progress.step - since_step) * self.local_batch * self.ctx.world_size / max(now - since, 1e-9)

    def _warn_skips(self) -> None:
        # Samples without texts were reported when the data was planned; undecodable images
        # show up only while reading, the same ones every epoch.
        if self.progress.skipped_corrupt:
            log.warning("skipped %d undecodable image(s) in each epoch (skipped.corrupt_images in the summary)",
                        self.progress.skipped_corrupt)

    def _fail_non_finite(self, what: str, steps: str, applied: str) -> None:
        progress = self.progress
        kept = (f"the last good checkpoint in {self.out_dir} (step {ckpt.load_train_state(self.out_dir)['step']}) is kept"
                if ckpt.has_checkpoint(self.out_dir) else "no checkpoint had been written yet")
        raise FlameError(
            f"training stopped: {what} at epoch {progress.epoch + 1}, {steps}; {applied}, and {kept}. "
            f"Lower train.lr or check the embeddings in {self.mode.source} for NaN/Inf"
        )

    def _save(self) -> None:
        if self.ctx.is_main:
            ckpt.save_checkpoint(self.out_dir, self.model, {
                **self.progress.to_state(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "steps_per_epoch": self.steps_per_epoch,
                "horizon_epochs": self.horizon_epochs,
                **self.identity.record(),
            }, training_id=self.identity.id)
            if self.on_checkpoint is not None:
                self.on_checkpoint()
        barrier(self.ctx)

    def _summary(self, timing: dict, resumed_from: int | None) -> dict[str, Any]:
        progress = self.progress
        seconds = timing["seconds"]
        return {
            "checkpoint": str(self.out_dir),
            "epochs": progress.epoch,
            "steps": progress.step,
            "steps_per_epoch": self.steps_per_epoch,
            "batch_size": self.cfg.batch_size,
            "world_size": self.ctx.world_size,
            "samples": self.plan.total,
            "losses": progress.losses,
            "first_loss": progress.first_loss,
            "last_loss": progress.last_loss,
            "images_per_sec": timing["images"] / seconds if seconds else None,
            "data_wait_share": timing["wait"] / seconds if seconds else None,
            "skipped": {"corrupt_images": progress.skipped_corrupt, "missing_embeddings": self.plan.missing},
            "precision": self.precision,
            "device": str(self.ctx.device),
            "nonfinite_check": self.nonfinite_check,
            "text_fingerprint": self.mode.text_fingerprint,
            "embedding_store": self.mode.source_fingerprint,
            "training_id": self.identity.id,
            "resumed_from_step": resumed_from,
        }
