"""``flame predict``: zero-shot scores of one image against a list of labels."""

from __future__ import annotations

import argparse
import json

from flame.errors import FlameError

HELP = "zero-shot classify one image with a trained FLAME checkpoint against comma-separated labels"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder written by `flame train` (or its model.safetensors)")
    parser.add_argument("--image", required=True, help="image file (any format Pillow reads)")
    parser.add_argument("--labels", required=True, help='comma-separated candidate labels, e.g. "a dog,a cat,a car"')
    parser.add_argument("--facet-set", default="raw",
                        help="prompt family the labels are embedded with (a key of text.facet_sets; default raw)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace, config) -> int:
    from flame.model.zero_shot import zero_shot_scores

    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if not labels:
        raise FlameError(f"--labels {args.labels!r}: no label given")
    scores = zero_shot_scores(args.checkpoint, args.image, labels, facet_set=args.facet_set)
    if args.json:
        print(json.dumps({"image": str(args.image), "checkpoint": str(args.checkpoint), "scores": scores}))
    else:
        print(f"{'softmax':>8} {'sigmoid':>8}  label")
        for row in scores:
            print(f"{row['softmax']:8.4f} {row['sigmoid']:8.4f}  {row['label']}")
    return 0
