"""``flame download`` with ``data.distributor: ray`` on the two-node cluster of
``scripts/services.sh``, from an HTTP server on 127.0.0.1: the shards are the ones local
processes make, the shard tasks ran in the cluster's workers (with our fetcher: its failure
buckets show up), a killed run resumes on the cluster, and one begun with local processes
resumes on the cluster in object storage."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from flame.config import repo_root
from flame.data.download import STATE_FILE, SUMMARY_FILE, download_shards
from flame.errors import FlameError
from flame.locations import location
from flame.paths import is_url
from tests.fixtures.data import SAMPLE_DIR, data_config


def on_the_cluster(test):
    return pytest.mark.slow(pytest.mark.services(test))


PER_SHARD = 4
SHARDS = ["00000", "00001", "00002"]
# Buckets only our fetcher (flame.data.img2dataset_patch) sorts failures into: img2dataset's own
# download_image would file both under decode errors.
PATCH_FAILURES = {"not_an_image": 1, "too_large": 1}


def _sample_rows(count: int) -> list[dict]:
    lines = (SAMPLE_DIR / "train.jsonl").read_text(encoding="utf-8").splitlines()[:count]
    return [json.loads(line) for line in lines]


def _noise_jpeg(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _manifest(tmp_path: Path, http_server, slow_last_shard: float = 0.0) -> Path:
    """12 rows, 3 shards of 4: 9 good images and 3 failures (a web page, an image over
    max_image_bytes, a 404), one in each shard. With ``slow_last_shard``, each image of the
    last shard takes that many seconds to answer."""
    rows = _sample_rows(9)
    routes = {"/page.jpg": (200, "text/html", b"<html>moved</html>", 0.0),
              "/huge.jpg": (200, "image/jpeg", _noise_jpeg(600), 0.0)}
    manifest = []
    for i, row in enumerate(rows):
        delay = slow_last_shard if i >= 6 else 0.0
        routes[f"/good/{i}.jpg"] = (200, "image/jpeg", (SAMPLE_DIR / row["url"]).read_bytes(), delay)
        manifest.append({"url": f"/good/{i}.jpg", "captions": row["captions"]})
    manifest.insert(1, {"url": "/page.jpg", "caption": "a web page"})
    manifest.insert(6, {"url": "/huge.jpg", "caption": "too many bytes"})
    manifest.insert(10, {"url": "/missing.jpg", "caption": "not there"})
    base = http_server(routes)
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps({**r, "url": base + r["url"]}) + "\n" for r in manifest), encoding="utf-8")
    return path


DATA = {"number_sample_per_shard": PER_SHARD, "threads": 2, "timeout": 5.0, "max_image_bytes": 100_000}


def _params(tmp_path: Path, name: str, **data) -> Path:
    params = yaml.safe_load((repo_root() / "params.yaml").read_text(encoding="utf-8"))
    params["profiles"]["tiny"].setdefault("data", {}).update({**DATA, **data})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def _download_cmd(manifest: Path, out: str, params: Path) -> list[str]:
    return [sys.executable, "-m", "flame", "download", "--manifest", str(manifest), "--out", out,
            "--config", str(params), "--no-progress"]


def _env(ray_cluster, extra: dict | None = None) -> dict:
    # No data.cluster_address in the params: $RAY_ADDRESS names the cluster, as in Ray itself.
    return {**os.environ, "PYTHONPATH": str(repo_root()), **ray_cluster.env(), **(extra or {})}


def _run(cmd: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"flame download failed:\n{out}\n{err[-4000:]}"
    return proc


def _shard_contents(out) -> dict[str, dict[str, bytes]]:
    """Every complete shard's tar members (image, caption text, sample json) by name, read
    through the same location type for a folder or an s3:// prefix."""
    out = location(out)
    contents = {}
    for name in SHARDS:
        if not (out / f"{name}_stats.json").exists():
            continue
        with tarfile.open(fileobj=io.BytesIO((out / f"{name}.tar").read_bytes())) as tar:
            contents[name] = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    return contents


def _local_reference(tmp_path: Path, manifest: Path) -> tuple[dict, dict]:
    """The shards and summary of the same download by local processes."""
    out = tmp_path / "local"
    summary = download_shards(manifest, out, data_config(**DATA), progress=False)
    return _shard_contents(out), summary


def _same_download(summary: dict, reference: dict) -> None:
    keys = ("total", "success", "failures", "shards")
    assert {k: summary[k] for k in keys} == {k: reference[k] for k in keys}


def _cluster_tasks(ray_cluster, driver_pid: int) -> list:
    """The img2dataset shard tasks of the Ray job whose driver was process ``driver_pid``."""
    from ray.util.state import list_jobs, list_tasks

    jobs = [j for j in list_jobs(address=ray_cluster.jobs_url, limit=10_000)
            if j.driver_info is not None and j.driver_info.pid == str(driver_pid)]
    assert jobs, f"no Ray job was driven by pid {driver_pid}"
    latest = max(jobs, key=lambda j: int(j.job_id, 16))  # a pid may come round again
    return list_tasks(address=ray_cluster.jobs_url, filters=[("job_id", "=", latest.job_id)], limit=10_000,
                      detail=True)


@on_the_cluster
def test_ray_download_makes_the_local_shards_in_the_cluster_workers(tmp_path, http_server, ray_cluster):
    from ray.util.state import list_nodes

    manifest = _manifest(tmp_path, http_server)
    reference, reference_summary = _local_reference(tmp_path, manifest)
    assert reference_summary["failures"] == {**PATCH_FAILURES, "http_404": 1}
    assert sorted(reference) == SHARDS

    out = tmp_path / "ray"
    # A relative --out names a folder of this working folder, not of the Ray workers'.
    proc = _run(_download_cmd(manifest, "ray", _params(tmp_path, "ray", distributor="ray")), _env(ray_cluster), tmp_path)

    assert _shard_contents(out) == reference  # keys, captions, sample json and image bytes alike
    summary = json.loads((out / SUMMARY_FILE).read_text())
    _same_download(summary, reference_summary)  # our fetcher's buckets: it ran in the Ray workers
    assert (out / STATE_FILE).read_text() == (tmp_path / "local" / STATE_FILE).read_text()
    assert not (out / "_tmp").exists()
    # One img2dataset task per shard, finished in a worker of a node of the cluster.
    tasks = [t for t in _cluster_tasks(ray_cluster, proc.pid) if t.name == "ray_download"]
    assert [t.state for t in tasks] == ["FINISHED"] * len(SHARDS)
    cluster_nodes = {n.node_id for n in list_nodes(address=ray_cluster.jobs_url) if n.state == "ALIVE"}
    assert {t.node_id for t in tasks} <= cluster_nodes and all(t.worker_id for t in tasks)


def test_a_distributor_whose_package_is_missing_is_named(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"url": str(SAMPLE_DIR / _sample_rows(1)[0]["url"]), "caption": "x"}) + "\n")
    with pytest.raises(FlameError, match=r"data.distributor: pyspark needs the pyspark package, which is not installed"):
        download_shards(manifest, tmp_path / "out", data_config(distributor="pyspark"), progress=False)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def _wait_for(check, what: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not check():
        assert proc.poll() is None, f"the download ended before {what}: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@on_the_cluster
def test_killed_ray_download_resumes_on_the_cluster(tmp_path, http_server, ray_cluster):
    manifest = _manifest(tmp_path, http_server, slow_last_shard=1.5)
    out = tmp_path / "ray"
    cmd = _download_cmd(manifest, str(out), _params(tmp_path, "ray", distributor="ray", threads=1))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(ray_cluster), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: all((out / f"{n}_stats.json").exists() for n in SHARDS[:2]) and (out / "00002.tar").exists(),
              "shards 0 and 1 were done and shard 2 begun", proc)
    tasks = _cluster_tasks(ray_cluster, proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Ray ends a dead driver's tasks: nothing of the killed run writes on into the rerun's shards.
    deadline = time.time() + 60
    while any(t.state == "RUNNING" for t in _cluster_tasks(ray_cluster, proc.pid)):
        assert time.time() < deadline, "the killed driver's shard task still runs"
        time.sleep(0.5)
    assert any(t.name == "ray_download" for t in tasks)
    assert not (out / "00002_stats.json").exists() and not (out / SUMMARY_FILE).exists()
    done_stats = {n: (out / f"{n}_stats.json").read_text() for n in SHARDS[:2]}

    _run(cmd, _env(ray_cluster), tmp_path)

    reference, reference_summary = _local_reference(tmp_path, manifest)
    assert _shard_contents(out) == reference
    assert {n: (out / f"{n}_stats.json").read_text() for n in SHARDS[:2]} == done_stats  # not redone
    _same_download(json.loads((out / SUMMARY_FILE).read_text()), reference_summary)


def _multiprocessing_run_killed_in_shard_2(tmp_path: Path, manifest: Path, out: str, env: dict) -> None:
    """A download by one local process, killed once shards 0 and 1 are done, in shard 2."""
    cmd = _download_cmd(manifest, out, _params(tmp_path, "multiprocessing", processes=1, threads=1))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out = location(out)
    _wait_for(lambda: all((out / f"{n}_stats.json").exists() for n in SHARDS[:2]), "shards 0 and 1 were done", proc)
    if not is_url(out):  # a local tar shows while it is written; an object only once whole
        _wait_for(lambda: (out / "00002.tar").exists(), "shard 2 was begun", proc)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # img2dataset's local workers too
    proc.wait()
    assert not (out / "00002_stats.json").exists()


@on_the_cluster
def test_ray_download_into_object_storage_resumes_there(tmp_path, http_server, ray_cluster, services, monkeypatch):
    for name, value in services.aws_env.items():  # this process reads the bucket too
        monkeypatch.setenv(name, value)
    manifest = _manifest(tmp_path, http_server, slow_last_shard=1.0)
    reference, reference_summary = _local_reference(tmp_path, manifest)
    out = services.unique_prefix("download-ray")
    env = _env(ray_cluster, services.env())
    # Begun by local processes and killed in shard 2. An object is written whole or not at all,
    # but a kill between the tar's upload and its stats file leaves a tar without stats: put one.
    _multiprocessing_run_killed_in_shard_2(tmp_path, manifest, out, env)
    bucket = location(out)
    (bucket / "00002.tar").write_bytes((tmp_path / "local" / "00002.tar").read_bytes()[:3000])
    done_stats = {n: (bucket / f"{n}_stats.json").read_text() for n in SHARDS[:2]}

    _run(_download_cmd(manifest, out, _params(tmp_path, "ray", distributor="ray")), env, tmp_path)

    assert _shard_contents(out) == reference
    assert {n: (bucket / f"{n}_stats.json").read_text() for n in SHARDS[:2]} == done_stats
    _same_download(json.loads((bucket / SUMMARY_FILE).read_text()), reference_summary)
    assert not (bucket / "_tmp").exists()
