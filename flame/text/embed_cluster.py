"""Embedding on a Ray cluster: a pool of actors, each loading the frozen LLM once and embedding
the shards it is handed, one at a time, returning the arrays to this process, which writes the
store exactly as a one-process run does (``embed_shards`` decides what to embed and writes it).

A worker that dies is Ray's to handle: the actor is restarted (``max_restarts``) and the call it
was running, its shard in progress, is submitted to it again (``max_task_retries``), while the
other workers carry on. Only a shard whose retries (``text.worker_retries``) run out fails the
run, naming the shard; the shards written before stay for a rerun.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from flame.cluster import session
from flame.config import TextConfig
from flame.errors import FlameError
from flame.text.embed_shard import InputShard, ShardEmbedder, ShardResult, store_meta, worker_name
from flame.text.encoder import TextEncoder

log = logging.getLogger(__name__)

# How long to wait on the workers before saying what the run waits for (e.g. resources).
WAIT_NOTICE_S = 60.0


class ShardEmbedWorker:
    """A Ray actor: one encoder for its life, one shard per call."""

    def __init__(self, text_config: TextConfig):
        import ray

        encoder = TextEncoder.from_config(text_config)
        self.meta = store_meta(encoder, text_config)
        self.embedder = ShardEmbedder(encoder, text_config)
        self.name = worker_name(ray.get_runtime_context().get_node_id())

    def ready(self) -> tuple[dict, str]:
        """The store meta this worker's encoder makes, and the worker's ``<node>/<pid>``."""
        return self.meta, self.name

    def embed(self, shard: InputShard) -> tuple[str, list[str], np.ndarray, dict, str]:
        result = self.embedder.embed(shard)
        return self.meta["fingerprint"], result.keys, result.embeddings.cpu().numpy(), result.stats, self.name


def start_workers(text_config: TextConfig, workers: int) -> list:
    """``workers`` ``ShardEmbedWorker`` actors, spread over the cluster's nodes."""
    import ray

    gpus = text_config.worker_gpus
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    worker = ray.remote(ShardEmbedWorker).options(
        num_cpus=text_config.worker_cpus, num_gpus=gpus,
        max_restarts=text_config.worker_retries, max_task_retries=text_config.worker_retries,
        # Across nodes before doubling up on one: each worker holds a whole LLM.
        scheduling_strategy="SPREAD",
    )
    log.info("starting %d embedding worker(s) (%s CPU, %s GPU each) on the Ray cluster at %s",
             workers, text_config.worker_cpus, gpus, ray.get_runtime_context().gcs_address)
    return [worker.remote(text_config) for _ in range(workers)]


class RayRunner:
    """``workers`` (default ``text.workers``) ``ShardEmbedWorker`` actors on the cluster
    ``text.cluster_address`` (else ``$RAY_ADDRESS``, else a local Ray), fed one shard each as
    they finish."""

    def __init__(self, text_config: TextConfig, workers: int | None = None):
        self.retries = text_config.worker_retries
        with contextlib.ExitStack() as stack:  # a failed start leaves the cluster as an ended run does
            stack.enter_context(session(text_config.cluster_address))
            self.actors = start_workers(text_config, workers or text_config.workers)
            self.session = stack.pop_all()
        self.starting = {actor.ready.remote(): actor for actor in self.actors}
        self.idle: list = []
        self.meta: dict | None = None

    def store_meta(self) -> dict:
        """The meta of the first worker ready (every other must make the same store)."""
        while self.meta is None:
            self.idle.append(self._started(self._wait(list(self.starting))))
        return self.meta

    def run(self, shards: list[InputShard], bar: tqdm) -> Iterator[tuple[InputShard, ShardResult]]:
        pending = deque(shards)
        running: dict = {}  # call -> (actor, shard)

        def hand_out() -> None:
            while pending and self.idle:
                actor, shard = self.idle.pop(), pending.popleft()
                running[actor.embed.remote(shard)] = (actor, shard)

        bar.set_description(f"embedding on {len(self.actors)} worker(s)")
        hand_out()
        while running:
            ref = self._wait(list(running) + (list(self.starting) if pending else []))
            if ref in self.starting:
                self.idle.append(self._started(ref))
                hand_out()
                continue
            actor, shard = running.pop(ref)
            fingerprint, keys, embeddings, stats, worker = self._get(ref, f"shard {shard.name} ({shard.source})")
            self._check_fingerprint(fingerprint, worker)
            self.idle.append(actor)
            hand_out()
            bar.total = (bar.total or 0) + stats["unique_captions"]
            bar.update(stats["unique_captions"])
            bar.set_postfix(shards=f"{len(shards) - len(pending) - len(running)}/{len(shards)}")
            yield shard, ShardResult(keys, torch.from_numpy(np.array(embeddings)), stats, worker)

    def close(self) -> None:
        import ray

        try:
            for actor in self.actors:
                ray.kill(actor, no_restart=True)
        finally:
            self.session.close()

    # ---- Ray calls ------------------------------------------------------------------------
    def _started(self, ref):
        actor = self.starting.pop(ref)
        meta, name = self._get(ref, "starting an embedding worker")
        if self.meta is None:
            self.meta = meta
        self._check_fingerprint(meta["fingerprint"], name)
        log.info("embedding worker %s ready", name)
        return actor

    def _check_fingerprint(self, fingerprint: str, worker: str) -> None:
        if fingerprint != self.meta["fingerprint"]:
            raise FlameError(
                f"embedding worker {worker} makes store {fingerprint}, another worker {self.meta['fingerprint']}: "
                "the cluster's nodes load different LLM weights or library versions"
            )

    def _wait(self, refs: list):
        import ray

        while True:
            done, _ = ray.wait(refs, num_returns=1, timeout=WAIT_NOTICE_S)
            if done:
                return done[0]
            log.warning("still waiting for %d embedding worker call(s); the cluster has free: %s",
                        len(refs), ray.available_resources())

    def _get(self, ref, what: str):
        import ray
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        try:
            return ray.get(ref)
        except RayTaskError as e:
            if isinstance(e.cause, FlameError):  # a bad input or setting, said as this process would
                raise e.cause from None
            raise
        except RayActorError as e:
            if e.actor_init_failed:
                raise FlameError(f"{what}: the worker failed to start: {e}") from e
            raise FlameError(self._no_retry_left(what, e)) from e
        except WorkerCrashedError as e:
            raise FlameError(self._no_retry_left(what, e)) from e

    def _no_retry_left(self, what: str, error: Exception) -> str:
        return (f"{what}: its worker died and no retry is left (text.worker_retries={self.retries}: restarts "
                f"per worker and retries per shard); the shards written so far are kept for a rerun. "
                f"Ray says: {error}")
