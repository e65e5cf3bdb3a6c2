"""``flame predict``: zero-shot scores of one image against a list of labels."""

from __future__ import annotations

import argparse
import json

from flame.config import RAW_FACET_SET
from flame.errors import FlameError

HELP = "zero-shot classify one image with a trained FLAME checkpoint against comma-separated labels"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder written by `flame train` (or its model.safetensors)")
    parser.add_argument("--image", required=True, help="image file (any format Pillow reads)")
    parser.add_argument("--labels", required=True, help='comma-separated candidate labels, e.g. "a dog,a cat,a car"')
    parser.add_argument("--facet-set", default=RAW_FACET_SET,
                        help=f"prompt family the labels are embedded with (a key of text.facet_sets; default {RAW_FACET_SET})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace, config) -> int:
    from flame.data.images import ImageReadError, read_image
    from flame.model import load
    from flame.model.zero_shot import rank_labels

    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if not labels:
        raise FlameError(f"--labels {args.labels!r}: no label given")
    model = load(args.checkpoint)
    try:
        image = read_image(args.image)
    except ImageReadError as exc:
        raise FlameError(f"--image {args.image}: cannot read the image ({exc})") from None
    scores = rank_labels(model, model.preprocess(image).unsqueeze(0), labels, facet_set=args.facet_set)
    if args.json:
        print(json.dumps({"image": str(args.image), "checkpoint": str(args.checkpoint), "scores": scores}))
    else:
        print(f"{'softmax':>8} {'sigmoid':>8}  label")
        for row in scores:
            print(f"{row['softmax']:8.4f} {row['sigmoid']:8.4f}  {row['label']}")
    return 0
