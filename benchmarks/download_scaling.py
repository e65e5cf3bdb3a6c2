"""Download throughput of ``flame download`` on Ray with 1 and 2 workers, as one JSON object.

Usage: python benchmarks/download_scaling.py [--images 480] [--delay-ms 50] [--threads 1] [--rounds 2]

An HTTP server on 127.0.0.1 answers each image (the bundled sample's, under distinct URLs)
after ``--delay-ms``, so the work is latency-bound like a real download. The same manifest is
downloaded through img2dataset's ray distributor (``data.distributor: ray``) onto a Ray
cluster started here of 1 node, then of 2 nodes, each node with 1 CPU: one shard task (a
worker of ``--threads`` download threads) per node at a time. On each fresh cluster a small
warm-up download first starts the nodes' workers (their import of img2dataset: a cost paid
once per worker, reported as ``cold_start_s``), then the timed one runs in the same Ray job.
Rounds alternate the order (1, 2, 2, 1, ...) so that drift hits both alike.

- ``images_per_s``: images / wall time of the whole timed download (shards planned, every
  shard written, the summary made), the mean over the rounds.
- ``shard_images_per_s``: images / the span from the first shard task's start to the last
  one's end (img2dataset's stats files).
- ``ratio`` = 2-worker ``images_per_s`` / 1-worker (target >= 1.7).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flame.config import load_config  # noqa: E402
from flame.data.download import download_shards  # noqa: E402

SAMPLE = ROOT / "data" / "sample"
TARGET_RATIO = 1.7


class _DelayedImages(BaseHTTPRequestHandler):
    images: list[bytes] = []
    delay_s = 0.05

    def do_GET(self):  # noqa: N802 - http.server's name
        time.sleep(self.delay_s)
        body = self.images[int(self.path.rsplit("/", 1)[1].split(".")[0]) % len(self.images)]
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def start_server(delay_s: float) -> _Server:
    rows = [json.loads(line) for line in (SAMPLE / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    handler = type("Handler", (_DelayedImages,), {"images": [(SAMPLE / r["url"]).read_bytes() for r in rows],
                                                  "delay_s": delay_s})
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def write_manifest(path: Path, base_url: str, count: int) -> Path:
    path.write_text("".join(json.dumps({"url": f"{base_url}/img/{i}.jpg", "caption": f"image {i}"}) + "\n"
                            for i in range(count)), encoding="utf-8")
    return path


def measure(workers: int, manifest: Path, warm_up: Path, args) -> dict:
    """One download of ``manifest`` on a fresh Ray cluster of ``workers`` 1-CPU nodes, after
    ``warm_up``'s (which starts each node's worker and imports img2dataset there)."""
    from ray.cluster_utils import Cluster

    from flame.cluster import session

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(workers - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        data = {"distributor": "ray", "cluster_address": cluster.address, "threads": args.threads, "timeout": 30.0}
        # One Ray job for both downloads: the warmed-up workers serve the timed one.
        with session(cluster.address), tempfile.TemporaryDirectory(prefix="flame-bench-scaling-") as out:
            start = time.perf_counter()
            download_shards(warm_up, Path(out) / "warm-up", _data_config(data, number_sample_per_shard=2),
                            progress=False)
            cold_start = time.perf_counter() - start
            start = time.perf_counter()
            summary = download_shards(manifest, Path(out) / "timed",
                                      _data_config(data, number_sample_per_shard=args.per_shard), progress=False)
            seconds = time.perf_counter() - start
            stats = [json.loads(p.read_text()) for p in (Path(out) / "timed").glob("*_stats.json")]
    finally:
        cluster.shutdown()
    if summary["success"] != summary["total"]:
        raise SystemExit(f"{workers} worker(s): {summary['total'] - summary['success']} images failed: "
                         f"{summary['failures']}")
    span = max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats)
    return {"seconds": seconds, "cold_start_s": cold_start, "images_per_s": summary["total"] / seconds,
            "shard_images_per_s": summary["total"] / span}


def _data_config(data: dict, **more):
    return load_config(ROOT / "params.yaml", "tiny", overrides={"data": {**data, **more}}).data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--per-shard", type=int, default=20, help="images per shard (one Ray task each)")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="the server's delay before each image")
    parser.add_argument("--threads", type=int, default=1, help="download threads per worker")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    server = start_server(args.delay_ms / 1000)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    try:
        with tempfile.TemporaryDirectory(prefix="flame-bench-scaling-") as tmp:
            base = f"http://127.0.0.1:{server.server_address[1]}"
            manifest = write_manifest(Path(tmp) / "manifest.jsonl", base, args.images)
            warm_up = write_manifest(Path(tmp) / "warm-up.jsonl", base, 8)  # 4 shards of 2
            for r in range(args.rounds):
                for workers in (1, 2) if r % 2 == 0 else (2, 1):
                    runs[workers].append(measure(workers, manifest, warm_up, args))
    finally:
        server.shutdown()

    def mean(workers: int, key: str) -> float:
        return statistics.mean(run[key] for run in runs[workers])

    result = {
        "benchmark": "download_scaling",
        "distributor": "ray",
        "images": args.images,
        "shards": -(-args.images // args.per_shard),
        "delay_ms": args.delay_ms,
        "threads_per_worker": args.threads,
        "rounds": args.rounds,
    }
    for workers in (1, 2):
        result[f"workers_{workers}"] = {
            "images_per_s": round(mean(workers, "images_per_s"), 1),
            "shard_images_per_s": round(mean(workers, "shard_images_per_s"), 1),
            "seconds": [round(run["seconds"], 2) for run in runs[workers]],
            "cold_start_s": [round(run["cold_start_s"], 2) for run in runs[workers]],
        }
    result["ratio"] = round(mean(2, "images_per_s") / mean(1, "images_per_s"), 2)
    result["shard_ratio"] = round(mean(2, "shard_images_per_s") / mean(1, "shard_images_per_s"), 2)
    result["target_ratio"] = TARGET_RATIO
    result["meets_target"] = result["ratio"] >= TARGET_RATIO
    print(json.dumps(result))


if __name__ == "__main__":
    main()
