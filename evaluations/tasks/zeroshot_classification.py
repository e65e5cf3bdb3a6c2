"""Zero-shot classification: each class is the mean of its name in every template,
embedded by the frozen LLM with the protocol's facet set (the paper: the raw prompt over
OpenAI's 80 ImageNet templates); images go to the most similar class."""

from __future__ import annotations

import torch

from evaluations.datasets import ClassificationSet
from evaluations.embedding import embed_texts
from evaluations.metrics import score_classification
from evaluations.tasks.base import TaskOutput, TextProtocol
from flame.model.zero_shot import build_zero_shot_classifier


def class_embeddings(model, classnames: list[str], protocol: TextProtocol, batch_size: int = 64,
                     cache_texts: bool = False) -> torch.Tensor:
    """``[C, D]``: per class, the normalised mean of its normalised template embeddings
    (batched, with a progress bar, and cached by the text encoder's fingerprint)."""
    templates = protocol.template_strings()

    def encode(prompts: list[str]) -> torch.Tensor:
        return embed_texts(model, prompts, protocol.facet_set, batch_size,
                           desc=f"class prompts ({len(classnames)} classes x {len(templates)} templates)",
                           use_cache=cache_texts, pooling=protocol.pooling)

    return build_zero_shot_classifier(model, classnames, templates, protocol.facet_set, encode_texts=encode)


def evaluate_zeroshot(model, data: ClassificationSet, image_emb: torch.Tensor, protocol: TextProtocol,
                      batch_size: int = 64, cache_texts: bool = False) -> TaskOutput:
    """``image_emb``: the embeddings of ``data.images``. Per query (image): acc1, and acc5 with at least 5 classes."""
    classifier = class_embeddings(model, data.classnames, protocol, batch_size, cache_texts)
    scores = score_classification(image_emb @ classifier.T, data.labels)
    details = {"n_images": len(data.images), "n_classes": len(data.classnames),
               "n_templates": len(protocol.template_strings()), "facet_set": protocol.facet_set}
    return TaskOutput(scores.metrics, details, per_query=scores.hits)
