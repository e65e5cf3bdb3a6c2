"""``flame download``: a manifest -> webdataset shards, through img2dataset.

A shard counts as complete only once its ``NNNNN_stats.json`` exists (img2dataset writes
it last). A rerun deletes partial shards left by a killed run and lets img2dataset's
incremental mode redo only those, so every key ends up exactly once.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

# albumentations (imported by img2dataset) otherwise asks PyPI for a newer version on import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import img2dataset.downloader as downloader_module
from img2dataset.downloader import Downloader, is_disallowed

from flame.atomic import write_json, write_text
from flame.data.manifest import Manifest, load_manifest, write_img2dataset_input
from flame.data.shards import DOWNLOAD_STATE_FILE
from flame.digest import sha256_text
from flame.errors import FlameError

log = logging.getLogger(__name__)

SUMMARY_FILE = "download_summary.json"
STATE_FILE = DOWNLOAD_STATE_FILE
SHARD_DIGITS = 5  # img2dataset's oom_shard_count default: shard names 00000 .. 99999
EXAMPLES_PER_REASON = 5
NON_IMAGE_OK_TYPES = ("application/octet-stream", "binary/octet-stream")

FAILURE_REASONS = ("http_404", "file_not_found", "http_error", "timeout", "decode_error",
                   "not_an_image", "too_large", "other")


def failure_reason(error_message: str | None) -> str:
    """Bucket one of img2dataset's (or our fetcher's) error strings."""
    msg = (error_message or "").lower()
    if "http error 404" in msg or "http error 410" in msg:
        return "http_404"
    if "no such file or directory" in msg or "errno 2]" in msg:
        return "file_not_found"
    if "timed out" in msg or "timeout" in msg:
        return "timeout"
    if msg.startswith("not an image"):
        return "not_an_image"
    if "too large" in msg:
        return "too_large"
    if "decoding error" in msg:
        return "decode_error"
    if "http error" in msg or "urlopen error" in msg or "connection" in msg or "remote end closed" in msg:
        return "http_error"
    return "other"


def fetch_image(row, timeout, user_agent_token, disallowed_header_directives, max_bytes):
    """img2dataset's ``download_image`` plus two checks it lacks: an HTTP Content-Type that
    is not an image, and a body over ``max_bytes`` (read no further than that)."""
    key, url = row
    agent = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
    if user_agent_token:
        agent += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"
    try:
        request = urllib.request.Request(url, data=None, headers={"User-Agent": agent})
        with urllib.request.urlopen(request, timeout=timeout) as r:
            if disallowed_header_directives and is_disallowed(r.headers, user_agent_token, disallowed_header_directives):
                return key, None, "Use of image disallowed by X-Robots-Tag directive"
            # Only a server's own header is evidence; urllib guesses file:// types from the name.
            if url.startswith(("http://", "https://")) and r.headers.get("Content-Type"):
                ctype = r.headers.get_content_type()
                if not ctype.startswith("image/") and ctype not in NON_IMAGE_OK_TYPES:
                    return key, None, f"not an image: content type {ctype}"
            length = r.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                return key, None, f"image too large: {length} bytes > max_image_bytes {max_bytes}"
            data = r.read(max_bytes + 1)
            if len(data) > max_bytes:
                return key, None, f"image too large: more than max_image_bytes {max_bytes}"
        return key, io.BytesIO(data), None
    except Exception as err:  # noqa: BLE001 - like img2dataset: every failure is a counted sample
        return key, None, str(err)


class CheckedDownloader(Downloader):
    """img2dataset's Downloader, installing :func:`fetch_image` inside each (spawned)
    worker process before a shard runs."""

    # Set on the class before img2dataset builds one; copied onto the instance so that
    # it travels, pickled, to the worker processes.
    default_max_image_bytes: int = 20_000_000

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_image_bytes = type(self).default_max_image_bytes

    def __call__(self, row):
        downloader_module.download_image = functools.partial(fetch_image, max_bytes=self.max_image_bytes)
        return super().__call__(row)


def shard_names(n_rows: int, per_shard: int) -> list[str]:
    return [f"{i:0{SHARD_DIGITS}d}" for i in range(math.ceil(n_rows / per_shard))]


def complete_shards(out_dir: str | Path) -> list[str]:
    """Names of the shards whose stats file exists (img2dataset finished them)."""
    out_dir = Path(out_dir)
    return sorted(p.name[: -len("_stats.json")] for p in out_dir.glob("*_stats.json"))


def _remove_partial_shards(out_dir: Path) -> list[str]:
    done = set(complete_shards(out_dir))
    removed = []
    for path in sorted(out_dir.iterdir()):
        stem = path.name.split(".")[0]
        if path.suffix in (".tar", ".parquet") and stem.isdigit() and stem not in done:
            path.unlink()
            removed.append(path.name)
    shutil.rmtree(out_dir / "_tmp", ignore_errors=True)
    return removed


def _settings(data_config) -> dict:
    keys = ("image_size", "resize_mode", "encode_format", "number_sample_per_shard", "max_image_bytes",
            "max_image_area")
    return {k: getattr(data_config, k) for k in keys}


def _fingerprint(manifest: Manifest, data_config) -> str:
    # The text hashed is what earlier versions hashed piece by piece: existing downloads resume.
    rows = "".join(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str) + "\n" for row in manifest.rows)
    return sha256_text(json.dumps(_settings(data_config), sort_keys=True) + rows)


def _check_state(out_dir: Path, fingerprint: str, overwrite: bool) -> None:
    """Refuse to resume into shards made from another manifest or other settings."""
    state_path = out_dir / STATE_FILE
    has_shards = any(out_dir.glob("*.tar")) or any(out_dir.glob("*_stats.json"))
    if overwrite:
        for pattern in ("*.tar", "*.parquet", "*_stats.json", SUMMARY_FILE, STATE_FILE):
            for p in out_dir.glob(pattern):
                p.unlink()
        shutil.rmtree(out_dir / "_tmp", ignore_errors=True)
        return
    if not has_shards:
        return
    previous = state_path.read_text().strip() if state_path.exists() else None
    if previous != fingerprint:
        raise FlameError(
            f"{out_dir} already holds shards from a different manifest or data settings; "
            "use another --out folder, or --overwrite to replace them"
        )


class _Progress:
    """A tqdm bar over images, advanced as shards complete (img2dataset reports no finer)."""

    def __init__(self, out_dir: Path, total: int, already: int, enabled: bool):
        from tqdm import tqdm

        self.out_dir = out_dir
        self.bar = tqdm(total=total, initial=already, unit="img", desc="download", disable=not enabled)
        self.seen = set(complete_shards(out_dir))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(0.5):
            self.update()

    def update(self) -> None:
        for name in complete_shards(self.out_dir):
            if name in self.seen:
                continue
            try:
                stats = json.loads((self.out_dir / f"{name}_stats.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue  # being written; next poll
            self.seen.add(name)
            self.bar.update(stats.get("count", 0))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.update()
        self.bar.close()


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send everything printed to stdout meanwhile to stderr instead: ``sys.stdout`` in this
    process, and file descriptor 1, which img2dataset's spawned worker and logger processes
    inherit and print their progress to. Our stdout is kept for the command's results."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 at all: nothing for the children to print to either
        saved = None
    if saved is not None:
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _run_img2dataset(input_parquet: Path, out_dir: Path, data_config, extra_columns: list[str]) -> None:
    # The package exports a function named ``main`` that hides the module of that name.
    i2d = importlib.import_module("img2dataset.main")
    previous_sigint = signal.getsignal(signal.SIGINT)
    original_downloader = i2d.Downloader
    CheckedDownloader.default_max_image_bytes = data_config.max_image_bytes
    i2d.Downloader = CheckedDownloader
    try:
        with _stdout_to_stderr():
            i2d.download(
                url_list=str(input_parquet),
                output_folder=str(out_dir),
                input_format="parquet",
                output_format="webdataset",
                url_col="url",
                caption_col="caption",
                save_additional_columns=extra_columns or None,
                image_size=data_config.image_size,
                resize_mode=data_config.resize_mode,
                encode_format=data_config.encode_format,
                number_sample_per_shard=data_config.number_sample_per_shard,
                processes_count=data_config.processes,
                thread_count=data_config.threads,
                timeout=data_config.timeout,
                retries=data_config.retries,
                max_image_area=data_config.max_image_area or float("inf"),
                oom_shard_count=SHARD_DIGITS,
                incremental_mode="incremental",
                enable_wandb=False,
            )
    except SystemExit as exc:  # img2dataset's own SIGINT handler exits; report it as an interrupt
        raise KeyboardInterrupt from exc
    finally:
        i2d.Downloader = original_downloader
        signal.signal(signal.SIGINT, previous_sigint)


def summarize(out_dir: str | Path, manifest_path: str | Path | None = None, skipped: dict | None = None) -> dict:
    """Success rate and failures by reason (with example URLs) over all complete shards."""
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    total = success = 0
    failures: dict[str, int] = {}
    examples: dict[str, list[dict]] = {}
    shards = complete_shards(out_dir)
    for name in shards:
        table = pq.read_table(out_dir / f"{name}.parquet", columns=["url", "key", "status", "error_message"])
        for row in table.to_pylist():
            total += 1
            if row["status"] == "success":
                success += 1
                continue
            reason = failure_reason(row["error_message"])
            failures[reason] = failures.get(reason, 0) + 1
            bucket = examples.setdefault(reason, [])
            if len(bucket) < EXAMPLES_PER_REASON:
                bucket.append({"url": row["url"], "key": row["key"], "error": row["error_message"]})
    return {
        "manifest": str(manifest_path) if manifest_path else None,
        "out_dir": str(out_dir),
        "total": total,
        "success": success,
        "failed": total - success,
        "success_rate": success / total if total else 0.0,
        "failures": dict(sorted(failures.items())),
        "failure_examples": dict(sorted(examples.items())),
        "shards": shards,
        "skipped_rows": {k: len(v) for k, v in (skipped or {}).items()},
    }


def format_summary(summary: dict) -> str:
    lines = [
        f"downloaded {summary['success']}/{summary['total']} images "
        f"({100 * summary['success_rate']:.1f}%) into {len(summary['shards'])} shards in {summary['out_dir']}"
    ]
    for reason, count in summary["failures"].items():
        example = summary["failure_examples"][reason][0]
        lines.append(f"  {reason}: {count} (e.g. {example['url']}: {example['error']})")
    for reason, count in summary["skipped_rows"].items():
        if count:
            lines.append(f"  manifest rows skipped, {reason}: {count}")
    return "\n".join(lines)


def download_shards(manifest_path: str | Path, out_dir: str | Path, data_config, overwrite: bool = False,
                    progress: bool = True) -> dict:
    """Download a manifest into webdataset shards (resumable); returns the summary that is
    also written to ``out_dir/download_summary.json``.

    img2dataset starts its workers with multiprocessing's "spawn": a script calling this
    needs the usual ``if __name__ == "__main__":`` guard."""
    started = time.time()
    manifest_path = Path(manifest_path)
    out_dir = Path(out_dir)
    manifest = load_manifest(manifest_path, data_config.url_col, data_config.caption_col)
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(manifest, data_config)
    _check_state(out_dir, fingerprint, overwrite)
    removed = _remove_partial_shards(out_dir)
    if removed:
        log.info("removed partial shard files of an interrupted run: %s", ", ".join(removed))
    state = out_dir / STATE_FILE
    if not state.exists() or state.read_text().strip() != fingerprint:
        write_text(state, fingerprint + "\n")

    expected = shard_names(len(manifest.rows), data_config.number_sample_per_shard)
    done = set(complete_shards(out_dir))
    if not set(expected) <= done:
        extra_columns = [c for c in manifest.columns if c not in ("url", "caption")]
        per_shard = data_config.number_sample_per_shard
        already = sum(min(per_shard, len(manifest.rows) - int(n) * per_shard) for n in done if n in expected)
        (out_dir / SUMMARY_FILE).unlink(missing_ok=True)  # img2dataset would read it as a shard's stats
        with tempfile.TemporaryDirectory(prefix="flame-download-") as tmp:
            input_parquet = Path(tmp) / "manifest.parquet"
            write_img2dataset_input(manifest, input_parquet)
            with _Progress(out_dir, len(manifest.rows), already, progress):
                _run_img2dataset(input_parquet, out_dir, data_config, extra_columns)
        shutil.rmtree(out_dir / "_tmp", ignore_errors=True)
    missing = sorted(set(expected) - set(complete_shards(out_dir)))
    if missing:
        raise FlameError(
            f"{len(missing)} of {len(expected)} shards did not complete ({', '.join(missing[:5])}...); "
            "rerun the same command to resume"
        )
    summary = summarize(out_dir, manifest_path, manifest.skipped)
    summary["duration_s"] = round(time.time() - started, 3)
    summary["settings"] = _settings(data_config)
    write_json(out_dir / SUMMARY_FILE, summary)
    return summary
