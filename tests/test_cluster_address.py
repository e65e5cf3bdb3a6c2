"""A cluster address where no Ray cluster answers fails at once, naming the address, rather
than leaving ``ray.init`` to wait minutes for a GCS that is not there."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from flame.config import repo_root


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_embedding_on_an_address_where_no_cluster_answers_fails_naming_it(tmp_path):
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text(json.dumps({"key": "a", "caption": "a dog on grass"}) + "\n", encoding="utf-8")
    address = f"127.0.0.1:{_unused_port()}"
    proc = subprocess.run([sys.executable, "-m", "flame", "embed", "--input", str(manifest), "--out",
                           str(tmp_path / "emb"), "--no-progress", "--distributor", "ray", "--cluster-address", address],
                          cwd=repo_root(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stdout == ""
    assert f"error: no Ray cluster answers at {address}" in proc.stderr.strip().splitlines()[-1]


def test_a_cluster_address_that_is_not_host_and_port_is_refused():
    from flame.cluster import check_reachable
    from flame.errors import FlameError

    with pytest.raises(FlameError, match=r"'head-node': expected host:port"):
        check_reachable("head-node")
    check_reachable("ray://head-node:10001")  # Ray Client: Ray's to reach
