"""Zero-shot scores of one image against text labels with a trained FlameModel."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from flame.errors import FlameError


def zero_shot_scores(checkpoint: str | Path, image_path: str | Path, labels: list[str],
                     facet_set: str = "raw", model=None) -> list[dict]:
    """``[{"label", "softmax", "sigmoid", "logit"}]``, best first. ``sigmoid`` is the
    model's own pairwise probability (scale and bias of the sigmoid loss)."""
    from flame.model import load

    model = model or load(checkpoint)
    try:
        with Image.open(image_path) as img:
            pixels = model.preprocess(img).unsqueeze(0)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise FlameError(f"--image {image_path}: cannot read the image ({exc})") from None
    with torch.no_grad():
        image = model.encode_image(pixels)
        texts = model.encode_text(labels, facet_set=facet_set)
        logits = model.logits(image, texts.to(image.dtype))[0]
    softmax = logits.softmax(dim=0)
    sigmoid = logits.sigmoid()
    rows = [{"label": label, "softmax": float(softmax[i]), "sigmoid": float(sigmoid[i]), "logit": float(logits[i])}
            for i, label in enumerate(labels)]
    return sorted(rows, key=lambda row: -row["logit"])
