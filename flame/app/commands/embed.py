"""``flame embed``: captions -> frozen-LLM facet embeddings in a resumable store."""

from __future__ import annotations

import argparse
import json
import os
import sys

from flame.config import FlameConfig
from flame.errors import FlameError

HELP = (
    "Embed captions of webdataset shards (a folder of NNNNN.tar) or of a JSONL manifest with the "
    "frozen LLM, all facets in one pass, into OUT/<fingerprint>/<shard>.safetensors. "
    "A shard already embedded from the same input bytes (its recorded sha256) is kept, so rerunning "
    "after a kill resumes; one whose input changed since is re-embedded."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="folder of .tar shards (flame download output) or a .jsonl manifest")
    parser.add_argument("--out", required=True, help="store root; embeddings go to OUT/<fingerprint>/")
    parser.add_argument("--max-shards", type=int, default=None,
                        help="compute at most this many missing shards, then stop (a rerun continues)")
    parser.add_argument("--batch-size", type=int, default=None, help="override text.batch_size (captions per forward pass)")
    parser.add_argument("--caption-col", default=None,
                        help="JSONL column read as the 'caption' field (e.g. en); default: captions, else caption")
    parser.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)),
                        help="this process's index when several share the shards (default: $RANK or 0)")
    parser.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)),
                        help="number of processes sharing the shards; shard i goes to rank i %% world size "
                        "(default: $WORLD_SIZE or 1)")
    parser.add_argument("--distributor", choices=("local", "ray"), default=None,
                        help="override text.distributor: embed in this process, or on a pool of Ray workers "
                        "that each load the LLM once")
    parser.add_argument("--workers", type=int, default=None, help="override text.workers (Ray workers)")
    parser.add_argument("--cluster-address", default=None,
                        help="override text.cluster_address (default: $RAY_ADDRESS, else a Ray on this machine)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace, config: FlameConfig) -> int:
    from flame.text.embed import run_embedding

    if args.max_shards is not None and args.max_shards < 0:
        raise FlameError(f"--max-shards must be >= 0 (got {args.max_shards})")
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise FlameError(f"--batch-size must be >= 1 (got {args.batch_size})")
        config.text.batch_size = args.batch_size
    if args.workers is not None and args.workers < 1:
        raise FlameError(f"--workers must be >= 1 (got {args.workers})")
    for name in ("distributor", "workers", "cluster_address"):
        if getattr(args, name) is not None:
            setattr(config.text, name, getattr(args, name))
    summary = run_embedding(config, args.input, args.out, max_shards=args.max_shards,
                            progress=not args.no_progress, caption_col=args.caption_col,
                            rank=args.rank, world_size=args.world_size)
    validation = summary["validation"]
    print(
        f"{'rank %d/%d: ' % (args.rank, args.world_size) if args.world_size > 1 else ''}"
        f"embedded {summary['shards_done']} shard(s) ({summary['shards_stale']} changed since embedded), "
        f"skipped {summary['shards_skipped']} already done, "
        f"{summary['shards_remaining']} remaining; {summary['samples']} samples, "
        f"{summary['skipped_empty']} skipped (empty captions), {summary['truncated']} truncated captions, "
        f"{summary['seconds']:.1f}s -> {summary['store']}",
        file=sys.stderr,
    )
    print(json.dumps(summary, sort_keys=True))
    if summary["shards_remaining"] == 0 and not validation["ok"]:
        raise FlameError(f"embedding store {summary['store']} failed validation: {'; '.join(validation['errors'])}")
    return 0
