"""Manifest reading, failure buckets and the shards of the real sample download."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from flame.app import cli
from flame.config import repo_root
from flame.data.download_layout import SUMMARY_FILE
from flame.data.download_summary import FAILURE_REASONS, failure_reason
from flame.data.manifest import load_manifest
from flame.data.shards import iter_shard, list_shards
from flame.errors import FlameError
from tests.fixtures.data import SAMPLE_DIR, write_manifest_slice


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_relative_paths_become_file_urls_and_captions_normalise(tmp_path):
    (tmp_path / "imgs").mkdir()
    manifest = _write_jsonl(tmp_path / "m.jsonl", [
        {"url": "imgs/a.jpg", "caption": "first", "captions": ["first", "second"], "zh": ["一只狗"]},
        {"url": "https://example.org/b.jpg", "captions": "only one"},
        {"url": "file:///data/c.png", "caption": "c", "long_caption": "a long one", "key": "k7"},
    ])
    m = load_manifest(manifest)
    assert [r["url"] for r in m.rows] == [
        (tmp_path / "imgs" / "a.jpg").as_uri(), "https://example.org/b.jpg", "file:///data/c.png"]
    assert m.rows[0]["captions"] == ["first", "second"] and m.rows[0]["zh"] == ["一只狗"]
    assert m.rows[1]["caption"] == "only one" and m.rows[1]["captions"] == ["only one"]
    # img2dataset owns "key": the manifest's own column is kept under another name.
    assert m.rows[2]["manifest_key"] == "k7" and "key" not in m.columns


def test_image_column_csv_and_parquet_manifests(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text('image,caption,captions\npics/x.jpg,a cat,"[""a cat"", ""a kitten""]"\n', encoding="utf-8")
    m = load_manifest(csv_path)
    assert m.rows[0]["url"] == (tmp_path / "pics" / "x.jpg").as_uri()
    assert m.rows[0]["captions"] == ["a cat", "a kitten"]

    pq.write_table(pa.table({"url": ["/abs/y.jpg", None], "caption": ["a dog", "lost"]}), tmp_path / "m.parquet")
    m = load_manifest(tmp_path / "m.parquet")
    assert [r["url"] for r in m.rows] == ["file:///abs/y.jpg"]
    assert m.skipped == {"missing_url": [2]}


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("nourl.jsonl", b'{"link": "a.jpg", "caption": "x"}\n', "no URL column 'url'"),
        ("nocap.jsonl", b'{"url": "a.jpg", "text": "x"}\n', "no caption column 'caption'"),
        ("latin1.jsonl", b'{"url": "a.jpg", "caption": "caf\xe9"}\n', "latin1.jsonl:1: not UTF-8"),
        ("broken.jsonl", b'{"url": "a.jpg", "caption": "x"}\n{"url": \n', "broken.jsonl:2: invalid JSON"),
        ("latin1.csv", b"url,caption\na.jpg,caf\xe9\n", "not UTF-8"),
        ("garbage.parquet", b"not parquet at all", "not a readable parquet file"),
        ("scheme.jsonl", b'{"url": "s3://bucket/a.jpg", "caption": "x"}\n', "row 1, column 'url': unsupported URL scheme"),
        ("m.xlsx", b"whatever", "unknown manifest format"),
    ],
)
def test_bad_manifest_names_file_and_problem(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(FlameError) as err:
        load_manifest(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_manifest_fails_through_cli_with_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert cli.main(["download", "--manifest", str(missing), "--out", str(tmp_path / "out")]) == 2
    assert f"manifest not found: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_download_stdout_holds_only_the_summary(tmp_path):
    """img2dataset's chatter (its own prints and those of its spawned worker and logger
    processes) goes to stderr; stdout is the command's result alone."""
    manifest = write_manifest_slice(tmp_path / "m.jsonl", 3)
    out = tmp_path / "shards"
    result = subprocess.run(
        [sys.executable, "-m", "flame", "download", "--manifest", str(manifest), "--out", str(out), "--no-progress"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(repo_root())}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"downloaded 3/3 images (100.0%) into 1 shards in {out}"]


@pytest.mark.parametrize(
    "error, reason",
    [
        ("HTTP Error 404: Not Found", "http_404"),
        ("HTTP Error 503: Service Unavailable", "http_error"),
        ("<urlopen error [Errno 111] Connection refused>", "http_error"),
        ("timed out", "timeout"),
        ("<urlopen error [Errno 2] No such file or directory: '/x/a.jpg'>", "file_not_found"),
        ("Image decoding error", "decode_error"),
        ("not an image: content type text/html", "not_an_image"),
        ("image area too large", "too_large"),
        ("image too large: more than max_image_bytes 10", "too_large"),
        ("aspect ratio too large", "too_large"),
        ("something new", "other"),
    ],
)
def test_failure_reason_buckets(error, reason):
    assert failure_reason(error) == reason and reason in FAILURE_REASONS


def test_sample_shards_hold_every_image_with_all_caption_fields(sample_shards, sample_manifest_slice):
    rows = [json.loads(line) for line in sample_manifest_slice.read_text(encoding="utf-8").splitlines()]
    shards = list_shards(sample_shards)
    assert [p.name for p in shards] == ["00000.tar", "00001.tar"]
    for p in shards:
        assert (sample_shards / f"{p.stem}.parquet").exists() and (sample_shards / f"{p.stem}_stats.json").exists()
    samples = [s for p in shards for s in iter_shard(p)]
    assert len(samples) == len(rows) == len({s.key for s in samples})
    by_url = {s.meta["url"]: s for s in samples}
    for row in rows:
        s = by_url[Path(row["url"]).as_uri()]
        assert s.captions() == row["captions"] and s.text == row["caption"]
        assert s.captions("zh") == row.get("zh", [])
        assert s.meta.get("m30k_task1_de") == row.get("m30k_task1_de")
    # keep_ratio at data.image_size=128: the shorter side becomes 128.
    sizes = [Image.open(io.BytesIO(s.image)).size for s in samples[:5]]
    assert all(min(size) == 128 for size in sizes)
    summary = json.loads((sample_shards / SUMMARY_FILE).read_text())
    assert summary["total"] == summary["success"] == len(rows) and summary["success_rate"] == 1.0
    assert summary["failures"] == {} and summary["shards"] == ["00000", "00001"]


def test_bundled_sample_set_is_complete_and_small():
    """data/sample: the 762 non-dev Flickr8k images (128 px longest side, 5 captions each),
    a disjoint dev split, relative paths, and its attribution."""
    splits = {}
    for split in ("train", "dev"):
        rows = [json.loads(line) for line in (SAMPLE_DIR / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert all(not Path(r["url"]).is_absolute() and len(r["captions"]) == 5 for r in rows)
        assert all(r["caption"] == r["captions"][0] for r in rows)
        splits[split] = {r["url"] for r in rows}
        with Image.open(SAMPLE_DIR / rows[0]["url"]) as im:
            assert max(im.size) == 128
    assert (len(splits["train"]), len(splits["dev"])) == (762, 113)
    assert not splits["train"] & splits["dev"]
    assert len(list((SAMPLE_DIR / "images").glob("*.jpg"))) == 875
    readme = (SAMPLE_DIR / "README.md").read_text(encoding="utf-8")
    assert "Hodosh" in readme and "Research use only" in readme
