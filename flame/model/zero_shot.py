"""Zero-shot classification with a FlameModel: one class embedding per label, built from
prompt templates. The one implementation behind ``flame predict``, the pyfunc's
``zero-shot`` task and the zero-shot benchmarks."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from flame.config import RAW_FACET_SET
from flame.errors import FlameError

LABEL_ONLY = ("{}",)

# What each score of ``rank_labels`` is, for the people who read them.
SCORE_LEGEND = {
    "logit": "scale * cosine(image, label) + bias, with the model's learnt scale and bias",
    "softmax": "probability among these labels only (sums to 1)",
    "sigmoid": "each label on its own, sigmoid(scale * cosine + bias) with the model's learnt scale and bias: "
               "a match probability if trained with train.loss=sigmoid (unmatched pairs near 0), uncalibrated if with infonce",
}


def build_zero_shot_classifier(
    model,
    classnames: Sequence[str],
    templates: Sequence[str] = LABEL_ONLY,
    facet_set: str = RAW_FACET_SET,
    encode_texts: Callable[[list[str]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``[C, D]``: per class, the L2-normalised mean of its L2-normalised template embeddings.

    ``encode_texts`` replaces ``model.encode_text`` (e.g. a cached, batched encoder)."""
    encode = encode_texts or (lambda texts: model.encode_text(texts, facet_set=facet_set))
    prompts = [template.format(name) for name in classnames for template in templates]
    with torch.no_grad():
        emb = F.normalize(encode(prompts).float(), dim=-1)
    emb = emb.view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


@torch.no_grad()
def label_logits(model, pixels: torch.Tensor, labels: Sequence[str], facet_set: str = RAW_FACET_SET,
                 templates: Sequence[str] = LABEL_ONLY) -> torch.Tensor:
    """``[B, C]``: the model's logits (its learnt scale and bias) of each image against each label."""
    image = model.encode_image(pixels)
    classifier = build_zero_shot_classifier(model, labels, templates, facet_set)
    return model.logits(image, classifier.to(image.dtype))


def rank_labels(model, pixels: torch.Tensor, labels: Sequence[str], facet_set: str = RAW_FACET_SET) -> list[dict]:
    """``[{"label", "softmax", "sigmoid", "logit"}]`` for one image ``[1, 3, H, W]``, best first
    (highest logit, hence highest softmax and sigmoid); see ``SCORE_LEGEND``."""
    logits = label_logits(model, pixels, labels, facet_set)[0]
    if not torch.isfinite(logits).all():
        raise FlameError("the model's scores are NaN/Inf: its weights are corrupt or it overflowed on this image")
    softmax, sigmoid = logits.softmax(dim=0), logits.sigmoid()
    rows = [{"label": label, "softmax": float(softmax[i]), "sigmoid": float(sigmoid[i]), "logit": float(logits[i])}
            for i, label in enumerate(labels)]
    return sorted(rows, key=lambda row: -row["logit"])
