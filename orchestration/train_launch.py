"""How the ``flame_model`` asset starts its training, through Dagster Pipes.

What runs: ``orchestration.train_step`` under ``orchestration.train_launcher`` (this Python,
or e.g. torchrun), or with ``orchestration.ray_train.workers`` the Ray Train driver
``orchestration.ray_train``. Where (``orchestration.train_pipes``):

- ``subprocess``: a process beside the step (Dagster's ``PipesSubprocessClient``); a Ray Train
  driver there joins the cluster named by ``orchestration.cluster_address`` or $RAY_ADDRESS;
- ``ray_job``: the same command as a Ray job on the cluster (dagster-ray's
  ``PipesRayJobClient``): its Pipes messages come back through the job's log, and the step's
  machine needs nothing of the training but the job's HTTP API.

Either way the materialisation and each logged step's metrics reach the run as Pipes messages.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import uuid
from pathlib import Path

from dagster import AssetExecutionContext, PipesClientCompletedInvocation, PipesSubprocessClient

from flame import cluster
from flame.config import FlameConfig, repo_root
from flame.errors import FlameError

# Tags of the MLflow run (and, through the registered_model asset, of the model version).
TAG_LAUNCHER = "train.launcher"
TAG_WORLD_SIZE = "train.world_size"
TAG_CLUSTER = "train.ray_cluster"
TAG_JOB = "train.ray_job"
# The Python of the cluster's nodes, found on their PATH: a Ray job runs where this one is not.
CLUSTER_PYTHON = "python"


def training_module(config: FlameConfig) -> str:
    return "orchestration.ray_train" if config.orchestration.ray_train.workers else "orchestration.train_step"


def _beside_python(program: str) -> str:
    """``program`` itself when on PATH, else the one beside this Python (a venv's torchrun)."""
    if shutil.which(program):
        return program
    beside = Path(sys.executable).parent / program
    return str(beside) if beside.exists() else program


def command(config: FlameConfig, arguments: list[str], on_cluster: bool = False) -> list[str]:
    """``<launcher> -m <training module> <arguments>``: the launcher is train_launcher's (not
    with Ray Train, which starts its processes itself), else the Python that runs it."""
    python = CLUSTER_PYTHON if on_cluster else sys.executable
    launcher = [] if config.orchestration.ray_train.workers else list(config.orchestration.train_launcher)
    launcher = launcher or [python]
    if not on_cluster:
        launcher[0] = _beside_python(launcher[0])
    return launcher + ["-m", training_module(config)] + arguments


def launch(context: AssetExecutionContext, config: FlameConfig, arguments: list[str], tags: dict[str, str],
           subprocess_client: PipesSubprocessClient) -> tuple[PipesClientCompletedInvocation, dict]:
    """Run the training (``arguments`` of orchestration.train_step; ``tags`` for its MLflow run)
    as ``orchestration.train_pipes`` says; returns the Pipes invocation and metadata of the launch."""
    address = config.orchestration.cluster_address
    if config.orchestration.train_pipes == "subprocess":
        env = {"RAY_ADDRESS": address} if address and config.orchestration.ray_train.workers else None
        if env and "://" in address and not address.startswith("ray://"):
            raise FlameError(f"orchestration.cluster_address={address!r}: a Ray Train driver beside the step joins the "
                             "cluster with ray.init, which takes the head's host:port (or ray://), not the dashboard's URL; "
                             "or set orchestration.train_pipes: ray_job")
        cmd = command(config, arguments + ["--tags-json", json.dumps(tags)])
        return subprocess_client.run(context=context, command=cmd, cwd=str(repo_root()), env=env), {}
    try:
        from dagster_ray import PipesRayJobClient
    except ImportError as exc:
        raise FlameError(f"orchestration.train_pipes='ray_job' needs dagster-ray ({exc}); install the cluster extra") from None
    job_id = f"flame-train-{context.run_id[:8]}-{uuid.uuid4().hex[:8]}"
    cmd = command(config, arguments + ["--tags-json", json.dumps({**tags, TAG_JOB: job_id})], on_cluster=True)
    client = PipesRayJobClient(address=address or None, poll_interval=1.0)
    invocation = client.run(context=context, submit_job_params={
        "entrypoint": shlex.join(cmd), "submission_id": job_id,
        # The driver's environment on the cluster: this code on PYTHONPATH, the storage's and
        # MLflow's variables (Pipes adds its own).
        "runtime_env": {"env_vars": cluster.worker_env()},
    })
    return invocation, {"ray_job": job_id}
