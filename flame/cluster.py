"""Joining a Ray cluster: which cluster, and the environment its workers run the project in.

The address rule is Ray's own: a configured address wins, else ``$RAY_ADDRESS``, else Ray
starts a local instance on this machine. Workers get this process's code root on
``PYTHONPATH`` and the variables that locate storage and services, so a task runs the same
code against the same stores on any node.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

import flame
from flame.errors import FlameError

# Variables a worker needs to reach what this process reaches (object storage, MLflow, caches).
FORWARDED_PREFIXES = ("AWS_", "MLFLOW_", "FLAME_", "HF_", "TRANSFORMERS_")
CODE_ROOT = str(Path(flame.__file__).resolve().parents[1])
# Set by Ray in the driver of a submitted job: the job's config, its runtime env included.
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
REACH_TIMEOUT_S = 10.0


def cluster_address(configured: str | None) -> str | None:
    """The cluster to join: ``configured``, else ``$RAY_ADDRESS``; None starts a local Ray."""
    return configured or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str) -> None:
    """Fail at once, naming ``address``, when nothing answers at a ``host:port`` cluster address:
    ``ray.init`` would wait minutes for the cluster's GCS before saying anything."""
    if address in ("auto", "local") or "://" in address:
        return  # Ray's own forms: found through the local node, or a Ray Client URL
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise FlameError(f"Ray cluster address {address!r}: expected host:port (or auto, or ray://host:port)")
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise FlameError(f"no Ray cluster answers at {address} ({exc}): start one (ray start --head, or "
                         "scripts/services.sh start ray) or correct the configured cluster address, "
                         "else $RAY_ADDRESS") from None


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)}
    path = [CODE_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != CODE_ROOT]
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def connect(address: str | None = None, setup_hook: str | None = None) -> None:
    """``ray.init`` on the cluster ``cluster_address(address)`` names, unless already joined.
    ``setup_hook``: a ``module.function`` every worker process runs first (e.g. a library patch)."""
    import ray

    if ray.is_initialized():
        return
    address = cluster_address(address)
    if address:
        check_reachable(address)
    # In a Ray job's driver, the job's runtime env (given when it was submitted) applies to all its
    # workers, and Ray refuses a ray.init that sets one of its variables again.
    given = _job_env_vars()
    runtime_env: dict = {"env_vars": {k: v for k, v in worker_env().items() if k not in given}}
    if setup_hook:
        runtime_env["worker_process_setup_hook"] = setup_hook
    # Workers' output stays in the cluster's logs: this process's stdout holds its result alone.
    ray.init(address=address, runtime_env=runtime_env, log_to_driver=False,
             configure_logging=False)


def _job_env_vars() -> dict[str, str]:
    """The variables of the runtime env of the Ray job this process is the driver of, if any."""
    job = json.loads(os.environ.get(RAY_JOB_CONFIG_ENV, "{}"))
    return (job.get("runtime_env") or {}).get("env_vars") or {}


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def session(address: str | None = None, setup_hook: str | None = None) -> Iterator[None]:
    """Joined to the cluster (see ``connect``) for the block, and left after unless joined before.
    Meanwhile this process's stdout goes to stderr: Ray's driver prints what the raylets report
    (e.g. a worker that died) to stdout, which holds a command's result alone."""
    import ray

    joined = not ray.is_initialized()
    with contextlib.redirect_stdout(sys.stderr):
        connect(address, setup_hook)
        try:
            yield
        finally:
            if joined:
                disconnect()
