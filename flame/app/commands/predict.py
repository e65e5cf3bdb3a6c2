"""``flame predict``: zero-shot scores of one image against a list of labels."""

from __future__ import annotations

import argparse
import json
import logging

from flame.config import RAW_FACET_SET
from flame.data.images import ImageReadError, read_image
from flame.errors import FlameError

HELP = "zero-shot classify one image with a trained FLAME checkpoint against comma-separated labels"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder written by `flame train` (or its model.safetensors)")
    parser.add_argument("--image", required=True, help="image file (any format Pillow reads)")
    parser.add_argument("--labels", required=True, help='comma-separated candidate labels, e.g. "a dog,a cat,a car"')
    parser.add_argument("--facet-set", default=RAW_FACET_SET,
                        help=f"prompt family the labels are embedded with (a key of text.facet_sets; default {RAW_FACET_SET})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def parse_labels(text: str) -> list[str]:
    """The comma-separated labels, blanks dropped and repeats kept once (first place wins)."""
    labels = [label.strip() for label in text.split(",") if label.strip()]
    if not labels:
        raise FlameError(f"--labels {text!r}: no label given")
    unique = list(dict.fromkeys(labels))
    if len(unique) < len(labels):
        repeated = [label for label in unique if labels.count(label) > 1]
        log.warning("--labels: %s given more than once; each is scored once", ", ".join(map(repr, repeated)))
    return unique


def run(args: argparse.Namespace, config) -> int:
    # The model imports torch: loaded once the arguments are parsed and the image read.
    from flame.model import load
    from flame.model.zero_shot import SCORE_LEGEND, rank_labels

    labels = parse_labels(args.labels)
    try:  # before the model, which takes seconds to load
        image = read_image(args.image, max_pixels=config.image.max_pixels)
    except ImageReadError as exc:
        raise FlameError(f"--image {args.image}: cannot read the image ({exc})") from None
    model = load(args.checkpoint)
    scores = rank_labels(model, model.preprocess(image).unsqueeze(0), labels, facet_set=args.facet_set)
    if args.json:
        print(json.dumps({"image": str(args.image), "checkpoint": str(args.checkpoint), "scores": scores,
                          "legend": SCORE_LEGEND}))
    else:
        print(f"{'softmax':>8} {'sigmoid':>8}  label")
        for row in scores:
            print(f"{row['softmax']:8.4f} {row['sigmoid']:8.4f}  {row['label']}")
        print(f"softmax: {SCORE_LEGEND['softmax']}; sigmoid: {SCORE_LEGEND['sigmoid']}")
    return 0
