"""``flame download`` against a real HTTP server on 127.0.0.1: every failure kind lands in
its bucket, good images all arrive, and a killed run resumes without duplicates."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from flame.config import repo_root
from flame.data.download import SUMMARY_FILE, download_shards
from flame.data.shards import iter_shard, list_shards
from flame.errors import FlameError
from tests.fixtures.data import SAMPLE_DIR, data_config

pytestmark = pytest.mark.slow

TIMEOUT_S = 1.0


def _jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _sample_rows(count: int) -> list[dict]:
    lines = (SAMPLE_DIR / "train.jsonl").read_text(encoding="utf-8").splitlines()[:count]
    return [json.loads(line) for line in lines]


def _good_routes(rows: list[dict], delay: float = 0.0) -> dict:
    return {f"/good/{i}.jpg": (200, "image/jpeg", (SAMPLE_DIR / r["url"]).read_bytes(), delay) for i, r in enumerate(rows)}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _all_samples(out: Path):
    return [s for p in list_shards(out) for s in iter_shard(p)]


def test_each_failure_lands_in_its_bucket_and_good_images_all_arrive(tmp_path, http_server):
    rows = _sample_rows(6)
    rng = np.random.default_rng(0)
    routes = _good_routes(rows)
    routes.update({
        "/slow.jpg": (200, "image/jpeg", routes["/good/0.jpg"][2], TIMEOUT_S + 2),
        "/corrupt.jpg": (200, "image/jpeg", b"\xff\xd8\xff\xe0" + rng.bytes(3000), 0.0),
        "/page.jpg": (200, "text/html; charset=utf-8", b"<html><body>Not here</body></html>", 0.0),
        # Noise does not compress: ~2 MB of JPEG, over max_image_bytes.
        "/huge.jpg": (200, "image/jpeg", _jpeg(rng.integers(0, 255, (1000, 1000, 3), dtype=np.uint8)), 0.0),
        # A few kB of PNG that decodes to 4 megapixels, over max_image_area.
        "/bomb.png": (200, "image/png", _png_blank(2000, 2000), 0.0),
    })
    base = http_server(routes)
    good = [{"url": f"{base}/good/{i}.jpg", "captions": r["captions"], "zh": r.get("zh")} for i, r in enumerate(rows)]
    # file:// URLs go through the same path.
    good.append({"url": (SAMPLE_DIR / rows[0]["url"]).resolve().as_uri(), "captions": rows[0]["captions"]})
    bad = {
        "http_404": f"{base}/missing.jpg",
        "timeout": f"{base}/slow.jpg",
        "decode_error": f"{base}/corrupt.jpg",
        "not_an_image": f"{base}/page.jpg",
        "too_large": [f"{base}/huge.jpg", f"{base}/bomb.png"],
        "file_not_found": (tmp_path / "gone.jpg").as_uri(),
    }
    bad_rows = [{"url": u, "caption": f"a {reason} case"}
                for reason, urls in bad.items() for u in ([urls] if isinstance(urls, str) else urls)]
    manifest = _write_jsonl(tmp_path / "http.jsonl", good[:3] + bad_rows + good[3:])
    config = data_config(timeout=TIMEOUT_S, max_image_bytes=1_000_000, max_image_area=1_000_000,
                         number_sample_per_shard=8, threads=8)

    out = tmp_path / "shards"
    summary = download_shards(manifest, out, config, progress=False)

    assert summary["total"] == len(good) + len(bad_rows) and summary["success"] == len(good)
    assert summary["failures"] == {"decode_error": 1, "file_not_found": 1, "http_404": 1, "not_an_image": 1,
                                   "timeout": 1, "too_large": 2}
    for reason, urls in bad.items():
        urls = [urls] if isinstance(urls, str) else urls
        assert sorted(e["url"] for e in summary["failure_examples"][reason]) == sorted(urls)
    samples = _all_samples(out)
    by_url = {s.meta["url"]: s for s in samples}
    assert sorted(by_url) == sorted(r["url"] for r in good)
    for row in good:
        assert by_url[row["url"]].captions() == row["captions"]
        assert min(Image.open(io.BytesIO(by_url[row["url"]].image)).size) == config.image_size
    assert json.loads((out / SUMMARY_FILE).read_text()) == summary

    # A rerun finds every shard complete and touches none of them.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != SUMMARY_FILE}
    again = download_shards(manifest, out, config, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != SUMMARY_FILE} == mtimes
    assert again["failures"] == summary["failures"] and again["success"] == summary["success"]
    # Shards of another manifest (or other settings) are never mixed in.
    other = _write_jsonl(tmp_path / "other.jsonl", good[:2])
    with pytest.raises(FlameError, match="different manifest or data settings"):
        download_shards(other, out, config, progress=False)
    replaced = download_shards(other, out, config, overwrite=True, progress=False)
    assert replaced["total"] == replaced["success"] == 2 and replaced["shards"] == ["00000"]
    assert sorted(s.meta["url"] for s in _all_samples(out)) == sorted(r["url"] for r in good[:2])


def _png_blank(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _params_with(tmp_path: Path, **data) -> Path:
    params = yaml.safe_load((repo_root() / "params.yaml").read_text(encoding="utf-8"))
    params["profiles"]["tiny"].setdefault("data", {}).update(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def test_killed_download_resumes_without_duplicates(tmp_path, http_server):
    rows = _sample_rows(9)
    base = http_server(_good_routes(rows, delay=0.15))
    manifest = _write_jsonl(tmp_path / "m.jsonl",
                            [{"url": f"{base}/good/{i}.jpg", "captions": r["captions"]} for i, r in enumerate(rows)])
    out = tmp_path / "shards"
    params = _params_with(tmp_path, number_sample_per_shard=3, threads=1, processes=1)
    cmd = [sys.executable, "-m", "flame", "download", "--manifest", str(manifest), "--out", str(out),
           "--config", str(params), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(repo_root())}

    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Kill the whole process group (img2dataset's workers too) once shard 0 is done and shard 1 is being written.
    while not ((out / "00000_stats.json").exists() and (out / "00001.tar").exists()):
        assert proc.poll() is None and time.time() < deadline, "download ended before it could be killed"
        time.sleep(0.02)
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "00002_stats.json").exists() and not (out / SUMMARY_FILE).exists()
    # Readers see only complete shards meanwhile (a cut-off 00001.tar is left out).
    assert [p.name for p in list_shards(out)] == sorted(f"{p.name[:5]}.tar" for p in out.glob("*_stats.json"))
    first_shard_stats = (out / "00000_stats.json").read_text()

    summary = download_shards(manifest, out, data_config(number_sample_per_shard=3, threads=1), progress=False)

    samples = _all_samples(out)
    keys = [s.key for s in samples]
    assert len(keys) == len(set(keys)) == 9
    assert sorted(s.meta["url"] for s in samples) == sorted(f"{base}/good/{i}.jpg" for i in range(9))
    assert (out / "00000_stats.json").read_text() == first_shard_stats  # the complete shard was not redone
    assert not (out / "_tmp").exists()
    assert summary["success"] == summary["total"] == 9 and summary["shards"] == ["00000", "00001", "00002"]
    assert json.loads((out / SUMMARY_FILE).read_text()) == summary
