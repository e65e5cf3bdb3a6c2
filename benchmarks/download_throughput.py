"""Download throughput of ``flame download`` (img2dataset) on local real data, as one JSON object.

Usage: python benchmarks/download_throughput.py [--manifest PATH] [--caption-col COL]
Default: ../shared/data/flickr8k-866 (875 images, `image` paths, `en` captions) when
present, else the bundled data/sample/train.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flame.config import load_config  # noqa: E402
from flame.data.download import download_shards  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "flickr8k-866" / "manifest.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", default=None, help="manifest to download (default: see above)")
    parser.add_argument("--caption-col", default=None, help="caption column (default: en for flickr8k-866, else caption)")
    parser.add_argument("--profile", default="tiny", help="configuration profile for data.* settings")
    args = parser.parse_args()
    if args.manifest:
        manifest, caption_col = Path(args.manifest), args.caption_col or "caption"
    elif SHARED.exists():
        manifest, caption_col = SHARED, args.caption_col or "en"
    else:
        manifest, caption_col = ROOT / "data" / "sample" / "train.jsonl", args.caption_col or "caption"
    config = load_config(ROOT / "params.yaml", args.profile, overrides={"data": {"caption_col": caption_col}})
    with tempfile.TemporaryDirectory(prefix="flame-bench-download-") as tmp:
        start = time.perf_counter()  # download_shards keeps img2dataset's prints off stdout
        summary = download_shards(manifest, tmp, config.data, progress=False)
        seconds = time.perf_counter() - start
        shard_bytes = sum(p.stat().st_size for p in Path(tmp).glob("*.tar"))
    print(json.dumps({
        "benchmark": "download_throughput",
        "manifest": str(manifest),
        "profile": args.profile,
        "images": summary["total"],
        "success_rate": round(summary["success_rate"], 4),
        "failures": summary["failures"],
        "shards": len(summary["shards"]),
        "seconds": round(seconds, 2),
        "images_per_s": round(summary["total"] / seconds, 1),
        "shard_mb": round(shard_bytes / 2**20, 2),
        "image_size": config.data.image_size,
        "processes": config.data.processes,
        "threads": config.data.threads,
    }))


if __name__ == "__main__":
    main()
