"""Caption-embedding throughput: facet-decoupled single pass vs K separate passes, as one JSON object.

Usage: python benchmarks/embed_throughput.py [--long-n 12] [--short-n 48] [--profile tiny]

Same model, dtype and captions for both paths, in one run. Long set: real long
descriptions from ../shared/data/iiw-long-descriptions (7 facets, max_tokens raised so
they are not cut); short/raw sets: Flickr8k captions from ../shared/data/flickr8k-866.
Also embeds a slice of flickr8k-866 with ``flame embed``'s code to report the store's
bytes per sample. ``ratio_vs_separate`` = single-pass captions/s / separate captions/s
on the long set (target >= 3.5).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from flame.config import load_config  # noqa: E402
from flame.text.embed import run_embedding  # noqa: E402
from flame.text.encoder import TextEncoder  # noqa: E402
from flame.text.llm import load_llm  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
LONG_DIR = SHARED / "iiw-long-descriptions"
FLICKR = SHARED / "flickr8k-866" / "manifest.jsonl"


def long_descriptions(n: int, seed: int) -> list[str]:
    texts = []
    for path in sorted(LONG_DIR.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            texts.extend(v for k, v in sorted(record.items()) if isinstance(v, str) and len(v.split()) > 40)
    return random.Random(seed).sample(texts, min(n, len(texts)))


def flickr_captions(n: int, seed: int) -> list[str]:
    rows = [json.loads(line) for line in FLICKR.read_text(encoding="utf-8").splitlines()]
    caps = [c for row in rows for c in row.get("en", [])]
    return random.Random(seed).sample(caps, min(n, len(caps)))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def compare(encoder: TextEncoder, captions: list[str], facet_set: str) -> dict:
    encoder.encode(captions[:2], facet_set)  # warm-up (kernels, allocator), both paths
    encoder.encode_separate(captions[:2], facet_set)
    (single, stats), t_single = timed(lambda: encoder.encode_with_stats(captions, facet_set))
    separate, t_sep = timed(lambda: encoder.encode_separate(captions, facet_set))
    sep_tokens = sum(len(s) for c in captions for s in encoder.facet_token_ids(c, facet_set))
    rel = ((single - separate).abs().amax(-1) / separate.norm(dim=-1)).max().item()
    cos = torch.nn.functional.cosine_similarity(single, separate, dim=-1).min().item()
    return {
        "facet_set": facet_set,
        "K": encoder.num_facets(facet_set),
        "captions": len(captions),
        "truncated": stats.truncated,
        "mean_caption_tokens": round(sum(len(encoder._ids(c)) for c in captions) / len(captions), 1),
        "single_pass": {"seconds": round(t_single, 3), "captions_per_s": round(len(captions) / t_single, 2),
                        "prompts_per_s": round(len(captions) * encoder.num_facets(facet_set) / t_single, 2),
                        "tokens": stats.tokens, "tokens_per_s": round(stats.tokens / t_single, 1)},
        "separate_passes": {"seconds": round(t_sep, 3), "captions_per_s": round(len(captions) / t_sep, 2),
                            "tokens": sep_tokens, "tokens_per_s": round(sep_tokens / t_sep, 1)},
        "ratio_vs_separate": round(t_sep / t_single, 2),
        "max_rel_diff_vs_separate": rel,
        "min_cosine_vs_separate": round(cos, 6),
    }


def store_bytes_per_sample(config, encoder: TextEncoder, n: int) -> dict:
    rows = FLICKR.read_text(encoding="utf-8").splitlines()[:n]
    with tempfile.TemporaryDirectory(prefix="flame-bench-embed-") as tmp:
        manifest = Path(tmp) / "flickr.jsonl"
        manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
        summary, seconds = timed(lambda: run_embedding(config, manifest, Path(tmp) / "emb", encoder=encoder,
                                                       progress=False, caption_col="en"))
    v = summary["validation"]
    return {"samples": v["samples"], "K": v["K"], "D": v["D"], "bytes": v["bytes"],
            "bytes_per_sample": round(v["bytes"] / max(v["samples"], 1), 1), "seconds": round(seconds, 2),
            "samples_per_s": round(v["samples"] / seconds, 2), "prompts": summary["prompts"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny", help="configuration profile (LLM, dtype, templates)")
    parser.add_argument("--long-n", type=int, default=12, help="long descriptions to embed (7 facets)")
    parser.add_argument("--short-n", type=int, default=48, help="Flickr8k captions for the short and raw sets")
    parser.add_argument("--store-n", type=int, default=16, help="flickr8k-866 images embedded into a store")
    parser.add_argument("--long-max-tokens", type=int, default=512, help="text.max_tokens for the long set")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 avoids spin-wait stalls on a busy shared CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not LONG_DIR.is_dir() or not FLICKR.is_file():
        sys.exit(f"benchmark data not found under {SHARED}")

    config = load_config(ROOT / "params.yaml", args.profile)
    t = config.text

    def load(cache_dir):
        return load_llm(t.llm, t.gguf_file, t.revision, t.dtype, t.trust_remote_code, cache_dir)

    with tempfile.TemporaryDirectory(prefix="flame-bench-llm-cache-") as fresh:
        first, load_first = timed(lambda: load(fresh))  # GGUF: converts and writes the safetensors cache
        _, load_again = timed(lambda: load(fresh))
        del first
    loaded = load(t.cache_dir)
    encoder = TextEncoder(config.text, loaded)
    long_encoder = TextEncoder(config.text.model_copy(update={"max_tokens": args.long_max_tokens}), loaded)

    long_result = compare(long_encoder, long_descriptions(args.long_n, args.seed), "long")
    shorts = flickr_captions(args.short_n, args.seed)
    short_result = compare(encoder, shorts, "short")
    raw_result = compare(encoder, shorts, "raw")
    store = store_bytes_per_sample(config, encoder, args.store_n)
    print(json.dumps({
        "benchmark": "embed_throughput",
        "llm": config.text.llm,
        "dtype": str(encoder.dtype).replace("torch.", ""),
        "device": str(encoder.device),
        "threads": torch.get_num_threads(),
        "layer": encoder.layer,
        "llm_load_seconds": {"first_load_convert_and_cache": round(load_first, 2), "cached_load": round(load_again, 2)},
        "ratio_vs_separate": long_result["ratio_vs_separate"],
        "target_ratio_long": 3.5,
        "long": long_result,
        "short": short_result,
        "raw": raw_result,
        "store": store,
    }))


if __name__ == "__main__":
    main()
