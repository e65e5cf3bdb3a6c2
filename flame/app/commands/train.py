"""``flame train``: train the image tower against stored caption embeddings."""

from __future__ import annotations

import argparse
import json

from flame.errors import FlameError

HELP = "train a FLAME image tower on image shards + caption embeddings (resumable; DDP under torchrun)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", required=True, help="folder of webdataset shards made by `flame download`")
    parser.add_argument("--embeddings", default=None,
                        help="embedding store made by `flame embed` (its fingerprint folder, or the root holding one); "
                        "required in text mode flame, not used in text mode clip")
    parser.add_argument("--text-mode", choices=("flame", "clip"), default=None,
                        help="flame: frozen-LLM caption embeddings; clip: the CLIP baseline, a text transformer "
                        "trained from scratch on the raw captions (default: the profile's text.mode; --profile clip sets it)")
    parser.add_argument("--out", required=True,
                        help="checkpoint folder (model weights and config, train state, metrics, summary); "
                        "see flame.checkpoint")
    parser.add_argument("--epochs", type=int, default=None,
                        help="stop after this many epochs (default train.epochs); the LR schedule spans "
                        "max(this, train.epochs) epochs, so stopping early and resuming matches one long run")
    parser.add_argument("--resume", action="store_true",
                        help="continue the checkpoint in --out exactly where it stopped (starts fresh if there is none)")
    parser.add_argument("--no-tracking", action="store_true",
                        help="do not log to MLflow (default: log one run per checkpoint folder to tracking.tracking_uri "
                        "when tracking.enabled)")


def run(args: argparse.Namespace, config) -> int:
    from flame.train.tracked import train_tracked  # torch: loaded once the arguments are parsed

    if args.epochs is not None and args.epochs < 1:
        raise FlameError(f"--epochs must be at least 1 (got {args.epochs})")
    if args.text_mode:
        config.text.mode = args.text_mode
    summary = train_tracked(config, args.shards, args.embeddings, args.out, epochs=args.epochs, resume=args.resume,
                            tracking=config.tracking.enabled and not args.no_tracking)
    print(json.dumps(summary, sort_keys=True))
    return 0
