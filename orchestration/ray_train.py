"""The training as Ray Train workers on a Ray cluster, reporting to Dagster through Pipes.

``python -m orchestration.ray_train <the arguments of orchestration.train_step>`` joins the
cluster ($RAY_ADDRESS; inside a Ray job, the job's own cluster) and runs a ``TorchTrainer`` of
``orchestration.ray_train.workers`` workers. Ray Train starts the torch process group (gloo on
CPUs, NCCL on GPUs) and sets RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT, as torchrun
would; flame's trainer joins that group. Every worker runs ``orchestration.train_step.run``:
the same training, reading the training set and writing the checkpoints at the URLs it is
given, so they must be shared storage (object storage, or a disk every node mounts).

When a worker or its node dies, Ray restarts all workers (``max_failures`` times) and the
training continues from the last checkpoint in its folder, as any resumed training does.

This process is the one Dagster talks to: rank 0's logged metrics reach it through a Ray
queue and go to the run's log; rank 0's summary is the materialisation.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from argparse import Namespace
from contextlib import contextmanager

from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR

from flame import cluster
from flame.config import FlameConfig
from flame.errors import FlameError
from orchestration import train_step
from orchestration.train_launch import TAG_CLUSTER, TAG_LAUNCHER, TAG_WORLD_SIZE


class _QueueLog:
    """A log whose messages travel to the driver through a Ray queue."""

    def __init__(self, queue):
        self.queue = queue

    def info(self, message: str) -> None:
        self.queue.put(("info", message))


def train_worker(job: dict) -> dict | None:
    """One Ray Train worker: the training of ``orchestration.train_step``; rank 0's summary."""
    import ray
    import ray.train

    context = ray.train.get_context()
    rank = context.get_world_rank()
    queue = job["queue"]
    queue.put(("worker", {"rank": rank, "pid": os.getpid(), "node_ip": ray.util.get_node_ip_address(),
                          "node_id": ray.get_runtime_context().get_node_id()}))
    meta = train_step.run(Namespace(**job["args"]), _QueueLog(queue) if rank == 0 else None)
    return meta if rank == 0 else None


def _check_device(config: FlameConfig) -> None:
    settings, device = config.orchestration.ray_train, config.train.device
    if settings.use_gpu and device == "cpu":
        raise FlameError("orchestration.ray_train.use_gpu is true but train.device is cpu: set train.device to auto or cuda")
    if not settings.use_gpu and device.startswith("cuda"):
        raise FlameError(f"train.device={device!r} but orchestration.ray_train.use_gpu is false: the workers get no GPU")


class _Reports:
    """What the workers sent: their processes (by rank, the latest start) and how often rank 0 started."""

    def __init__(self, log):
        self.log = log
        self.workers: dict[int, dict] = {}
        self.starts = 0

    def take(self, item) -> None:
        kind, body = item
        if kind == "worker":
            self.workers[body["rank"]] = body
            if body["rank"] == 0:
                self.starts += 1
        elif self.log is not None:
            self.log.info(body)


@contextmanager
def _forwarding(queue, reports: _Reports):
    """Hands what arrives in ``queue`` to ``reports`` while the training runs, then the rest."""
    from ray.util.queue import Empty

    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            try:
                reports.take(queue.get(timeout=0.5))
            except Empty:
                continue

    thread = threading.Thread(target=pump, name="ray-train-reports", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        while not queue.empty():
            reports.take(queue.get_nowait())


def train(args: Namespace, log=None) -> dict:
    """Run the training ``args`` describe on Ray Train; returns rank 0's summary with where it ran."""
    config = train_step.load(args)
    settings = config.orchestration.ray_train
    if settings.workers < 1:
        raise FlameError("orchestration.ray_train.workers is 0: set the number of Ray Train workers (or train through "
                         "orchestration.train_step)")
    _check_device(config)
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    with cluster.session():
        address = ray.get_runtime_context().gcs_address
        args = Namespace(**vars(args))
        args.tags_json = json.dumps({**train_step.tags(args), TAG_LAUNCHER: "ray_train",
                                     TAG_WORLD_SIZE: str(settings.workers), TAG_CLUSTER: address})
        queue = Queue(actor_options={"num_cpus": 0})
        resources = {"CPU": settings.cpus_per_worker, **({"GPU": 1} if settings.use_gpu else {})}
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"args": vars(args), "queue": queue},
            scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=settings.use_gpu,
                                         resources_per_worker=resources,
                                         placement_strategy=settings.placement_strategy),
            run_config=RunConfig(name=f"flame-{args.training_id[:16]}-{uuid.uuid4().hex[:8]}",
                                 failure_config=FailureConfig(max_failures=settings.max_failures)),
        )
        reports = _Reports(log)
        with _forwarding(queue, reports):
            try:
                result = trainer.fit()
            except TrainingFailedError as exc:
                raise FlameError(f"the training on Ray ({settings.workers} workers at {address}) failed after "
                                 f"{reports.starts} start(s), orchestration.ray_train.max_failures="
                                 f"{settings.max_failures}: {exc}") from None
    meta = dict(result.return_value or {})
    meta.update(ray_cluster=address, ray_starts=reports.starts,
                ray_workers=[reports.workers[r] for r in sorted(reports.workers)])
    return meta


def main(argv: list[str] | None = None) -> int:
    args = train_step.build_parser("python -m orchestration.ray_train", __doc__.splitlines()[0]).parse_args(argv)
    return train_step.report(train, args, DAGSTER_PIPES_CONTEXT_ENV_VAR in os.environ)


if __name__ == "__main__":
    # Through the package, not as __main__: the workers import train_worker by this module's name.
    from orchestration import ray_train

    sys.exit(ray_train.main())
