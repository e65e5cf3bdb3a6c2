"""``flame download``: a manifest -> webdataset shards, through img2dataset.

A shard counts as complete only once its ``NNNNN_stats.json`` exists (img2dataset writes
it last). A rerun deletes partial shards left by a killed run and lets img2dataset's
incremental mode redo only those, so every key ends up exactly once.

The entry point; its parts: ``download_layout`` (the folder's files), ``download_summary``
(failure reasons and the summary), ``img2dataset_run`` and ``img2dataset_patch`` (running
img2dataset with our fetcher). ``format_summary`` and the file names are importable from here
too, for the callers that run a download and report it."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from pathlib import Path

from tqdm import tqdm

from flame.atomic import write_json, write_text
from flame.data.download_layout import STATE_FILE, SUMMARY_FILE, complete_shards, shard_names
from flame.data.download_summary import format_summary, summarize
from flame.data.img2dataset_run import check_distributor, run_img2dataset
from flame.data.manifest import Manifest, load_manifest, write_img2dataset_input
from flame.digest import sha256_text
from flame.errors import FlameError
from flame.locations import Location, fetch, location, remove_tree

__all__ = ["STATE_FILE", "SUMMARY_FILE", "download_shards", "format_summary"]

log = logging.getLogger(__name__)


def _remove_partial_shards(out_dir: Location) -> list[str]:
    done = set(complete_shards(out_dir))
    removed = []
    if not out_dir.is_dir():  # an object-store prefix nothing was written under yet
        return removed
    for path in sorted(out_dir.iterdir()):
        stem = path.name.split(".")[0]
        if path.suffix in (".tar", ".parquet") and stem.isdigit() and stem not in done:
            path.unlink()
            removed.append(path.name)
    remove_tree(out_dir / "_tmp")
    return removed


def _settings(data_config) -> dict:
    keys = ("image_size", "resize_mode", "encode_format", "number_sample_per_shard", "max_image_bytes",
            "max_image_area")
    return {k: getattr(data_config, k) for k in keys}


def _fingerprint(manifest: Manifest, data_config) -> str:
    # The text hashed is what earlier versions hashed piece by piece: existing downloads resume.
    rows = "".join(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str) + "\n" for row in manifest.rows)
    return sha256_text(json.dumps(_settings(data_config), sort_keys=True) + rows)


def _check_state(out_dir: Location, fingerprint: str, overwrite: bool) -> None:
    """Refuse to resume into shards made from another manifest or other settings."""
    state_path = out_dir / STATE_FILE
    has_shards = any(out_dir.glob("*.tar")) or any(out_dir.glob("*_stats.json"))
    if overwrite:
        for pattern in ("*.tar", "*.parquet", "*_stats.json", SUMMARY_FILE, STATE_FILE):
            for p in out_dir.glob(pattern):
                p.unlink()
        remove_tree(out_dir / "_tmp")
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

    def __init__(self, out_dir: Location, total: int, already: int, enabled: bool):
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


def download_shards(manifest_path: str | Path, out_dir: str | Path, data_config, overwrite: bool = False,
                    progress: bool = True) -> dict:
    """Download a manifest into webdataset shards (resumable); returns the summary that is
    also written to ``out_dir/download_summary.json``. ``out_dir`` may be an object-store URL:
    img2dataset then writes the shards there itself.

    ``data_config.distributor`` runs the shards in local processes or on a Ray or Spark cluster;
    shards are the same either way, so a run resumes under another distributor. With a cluster,
    ``out_dir`` must be a place every worker reaches (object storage, a shared disk).

    img2dataset starts its local workers with multiprocessing's "spawn": a script calling this
    needs the usual ``if __name__ == "__main__":`` guard."""
    started = time.time()
    check_distributor(data_config)
    manifest_path = location(manifest_path)
    out_dir = location(out_dir)
    manifest = load_manifest(fetch(manifest_path), data_config.url_col, data_config.caption_col)
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
                run_img2dataset(input_parquet, out_dir, data_config, extra_columns)
        remove_tree(out_dir / "_tmp")
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
