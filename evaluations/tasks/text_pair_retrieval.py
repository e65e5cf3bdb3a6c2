"""Text-side check on long descriptions: two human descriptions of the same image
(e.g. DOCCI vs IIW) should find each other among all the others.

Both sides are embedded twice: with the raw prompt (one facet) and with all long facets
averaged, so the result shows what the facet average adds on long text. Only the frozen
LLM is involved: every checkpoint with the same text encoder scores the same.
"""

from __future__ import annotations

import numpy as np

from evaluations.datasets import TextPairSet
from evaluations.embedding import embed_texts
from evaluations.metrics import retrieval_metrics
from evaluations.tasks.base import TaskOutput, TextProtocol
from flame.config import LONG_FACET_SET, RAW_FACET_SET

FACET_SETS = (RAW_FACET_SET, LONG_FACET_SET)
KS = (1, 5)


def evaluate_text_pairs(model, sets: list[TextPairSet], protocol: TextProtocol, batch_size: int = 64,
                        facet_sets=FACET_SETS, cache_texts: bool = False) -> TaskOutput:
    """Both ``facet_sets`` are scored, each pooled as ``protocol`` says (its own facet set is ignored)."""
    metrics: dict[str, float] = {}
    details: dict = {"sources": {}}
    for pairs in sets:
        n = len(pairs.queries)
        details["sources"][pairs.name] = {"n_pairs": n}
        for facet_set in facet_sets:
            q = embed_texts(model, pairs.queries, facet_set, batch_size, desc=f"{pairs.name}: queries ({facet_set})",
                            use_cache=cache_texts, pooling=protocol.pooling)
            t = embed_texts(model, pairs.targets, facet_set, batch_size, desc=f"{pairs.name}: targets ({facet_set})",
                            use_cache=cache_texts, pooling=protocol.pooling)
            # Targets play the images: "image_retrieval" is query -> target, "text_retrieval" target -> query.
            m = retrieval_metrics(t, q, list(range(n)), ks=KS)
            for k in KS:
                metrics[f"{pairs.name}_{facet_set}_pair_recall@{k}"] = m[f"mean_recall@{k}"]
                metrics[f"chance_{pairs.name}_{facet_set}_pair_recall@{k}"] = m[f"chance_mean_recall@{k}"]
    for facet_set in facet_sets:
        for k in KS:
            for prefix in ("", "chance_"):
                key = f"{facet_set}_pair_recall@{k}"
                metrics[prefix + key] = float(np.mean([metrics[f"{prefix}{p.name}_{key}"] for p in sets]))
    details["facet_sets"] = list(facet_sets)
    return TaskOutput(metrics, details)
