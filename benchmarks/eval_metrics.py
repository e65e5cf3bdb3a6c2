"""Time and memory of the evaluation metrics on precomputed embeddings, as one JSON object.

Retrieval at Flickr30k-test size by default (1000 images x 5 captions, the LLM width of
the tiny profile), and the text-embedding cache lookup for the same captions. The model
is not involved: this is the cost the runner adds on top of embedding.

Usage: python benchmarks/eval_metrics.py [--images N] [--captions C] [--dim D]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from evaluations.metrics import classification_metrics, retrieval_metrics  # noqa: E402
from evaluations.text_cache import TextEmbeddingCache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000, help="gallery images")
    parser.add_argument("--captions", type=int, default=5, help="captions per image")
    parser.add_argument("--dim", type=int, default=576, help="embedding width")
    parser.add_argument("--classes", type=int, default=1000, help="zero-shot classes")
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(args.images, args.dim, generator=gen), dim=-1)
    index = torch.arange(args.images).repeat_interleave(args.captions)
    texts = torch.nn.functional.normalize(images[index] + torch.randn(len(index), args.dim, generator=gen), dim=-1)

    t = time.perf_counter()
    metrics = retrieval_metrics(images, texts, index)
    retrieval_s = time.perf_counter() - t

    logits = torch.randn(args.images * args.captions, args.classes, generator=gen)
    t = time.perf_counter()
    classification_metrics(logits, torch.randint(0, args.classes, (len(logits),), generator=gen))
    classification_s = time.perf_counter() - t

    strings = [f"caption number {i}" for i in range(len(index))]
    with tempfile.TemporaryDirectory() as tmp:
        cache = TextEmbeddingCache("bench", "raw", Path(tmp))
        t = time.perf_counter()
        cache.put(strings, texts)
        cache.flush()
        put_s = time.perf_counter() - t
        t = time.perf_counter()
        found, missing = TextEmbeddingCache("bench", "raw", Path(tmp)).get(strings)
        get_s = time.perf_counter() - t
        assert not missing and len(found) == len(strings)

    print(json.dumps({
        "images": args.images, "texts": len(index), "dim": args.dim, "classes": args.classes,
        "retrieval_metrics_s": round(retrieval_s, 3),
        "classification_metrics_s": round(classification_s, 3),
        "text_cache_write_s": round(put_s, 3),
        "text_cache_read_s": round(get_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "image_retrieval_recall@1": round(metrics["image_retrieval_recall@1"], 4),
        "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
