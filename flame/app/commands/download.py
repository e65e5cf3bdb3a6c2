"""``flame download``: image URLs + captions -> webdataset shards (img2dataset)."""

from __future__ import annotations

import argparse

from flame.errors import FlameError

HELP = "download a manifest's images (http(s)://, file:// or paths) into webdataset shards with img2dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True,
                        help="CSV, TSV, JSONL or parquet with a URL column (data.url_col, or 'image') and "
                        "'caption' and/or 'captions'; other columns are kept in each sample's .json")
    parser.add_argument("--out", required=True,
                        help="shard folder; a rerun skips complete shards and resumes an interrupted run")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete shards already in --out (made from another manifest or settings) first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, config) -> int:
    from flame.data.download import download_shards, format_summary

    summary = download_shards(args.manifest, args.out, config.data, overwrite=args.overwrite,
                              progress=not args.no_progress)
    print(format_summary(summary))
    if summary["success_rate"] < config.data.min_success_rate:
        print(f"warning: success rate {summary['success_rate']:.3f} is below data.min_success_rate "
              f"{config.data.min_success_rate}")
    if summary["success"] == 0:
        raise FlameError(f"no image could be downloaded from {args.manifest}; see {args.out}/download_summary.json")
    return 0
