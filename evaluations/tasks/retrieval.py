"""Image-text retrieval: R@1/5/10 both ways, several texts per image allowed.

The texts are embedded by the protocol's facet set (the paper: the long facets, averaged
then normalised); ``long_retrieval`` is the same task on long descriptions.
"""

from __future__ import annotations

import torch

from evaluations.datasets import RetrievalSet
from evaluations.embedding import embed_texts
from evaluations.metrics import score_retrieval
from evaluations.tasks.base import RetrievalExamples, TaskOutput, TextProtocol


def evaluate_retrieval(
    model,
    data: RetrievalSet,
    image_emb: torch.Tensor,
    protocol: TextProtocol,
    batch_size: int = 64,
    n_examples: int = 4,
    cache_texts: bool = False,
) -> TaskOutput:
    """``image_emb``: the embeddings of ``data.images``. Per query: every recall of ``evaluations.hits.RECALL_METRICS``."""
    text_emb = embed_texts(model, data.texts, protocol.facet_set, batch_size, desc=f"{data.name}: texts ({protocol.facet_set})",
                           use_cache=cache_texts, pooling=protocol.pooling)
    scores = score_retrieval(image_emb, text_emb, data.text_to_image)
    details = {
        "n_images": len(data.images),
        "n_texts": len(data.texts),
        "facet_set": protocol.facet_set,
        "skipped_rows_without_text": data.skipped_rows,
    }
    return TaskOutput(scores.metrics, details, _examples(data, image_emb, text_emb, n_examples), scores.hits)


def _examples(data: RetrievalSet, image_emb: torch.Tensor, text_emb: torch.Tensor, n: int) -> RetrievalExamples:
    """The first caption of the first ``n`` images, with their top-5 images."""
    first_text: dict[int, int] = {}
    for j, img in enumerate(data.text_to_image):
        first_text.setdefault(img, j)
    picks = [first_text[i] for i in sorted(first_text)[:n]]
    k = min(5, len(data.images))
    top = (text_emb[picks] @ image_emb.T).topk(k, dim=1).indices.tolist()
    return RetrievalExamples(
        queries=[data.texts[j] for j in picks],
        ranked_images=[[data.images[i] for i in row] for row in top],
        correct=[data.images[data.text_to_image[j]] for j in picks],
    )
