"""A download's outcome: each failed sample's error bucketed into a reason, and the summary
(success rate, failures by reason with example URLs) over a folder's complete shards."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from flame.locations import fetch, location
from flame.data.download_layout import complete_shards

EXAMPLES_PER_REASON = 5

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


def summarize(out_dir: str | Path, manifest_path: str | Path | None = None, skipped: dict | None = None) -> dict:
    """Success rate and failures by reason (with example URLs) over all complete shards."""
    out_dir = location(out_dir)
    total = success = 0
    failures: dict[str, int] = {}
    examples: dict[str, list[dict]] = {}
    shards = complete_shards(out_dir)
    for name in shards:
        table = pq.read_table(fetch(out_dir / f"{name}.parquet"), columns=["url", "key", "status", "error_message"])
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
