"""Caption-embedding throughput: the facet-decoupled single pass against K separate passes
and against a plain causal forward over the same tokens, as one JSON object.

Usage: python benchmarks/embed_throughput.py [--long-n 100] [--short-n 48] [--profile tiny] [--op-profile]

Same model, dtype and captions for every path, in one run, interleaved batch by batch
over ``--rounds`` rounds, so that the machine's drift hits every path alike. Long set: the DOCCI descriptions of
../shared/data/iiw-long-descriptions with the 7 long facets (``--long-max-tokens`` 512
cuts only the longest, counted in ``truncated``); short/raw sets: Flickr8k captions from ../shared/data/flickr8k-866.

- ``ratio_vs_separate`` = time of the K separate passes / time of the single pass, on the
  long set (target >= 4.1, 90% of ``token_bound``: separate tokens / single-pass tokens).
- ``ratio_vs_plain_forward`` = time of a plain causal forward of the same packed token
  rows (no facet mask) / time of the single pass (target >= 0.9): the facet mask costs
  at most a tenth of what the hardware spends on the tokens anyway.
- ``--op-profile`` adds the top operators of one single pass (torch.profiler).

Also embeds a slice of flickr8k-866 with ``flame embed``'s code to report the store's
bytes per sample.
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
from flame.text.facet_attention import length_batches, separate_forward  # noqa: E402
from flame.text.llm import load_llm  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
DOCCI = SHARED / "iiw-long-descriptions" / "DOCCI_Test.jsonl"
FLICKR = SHARED / "flickr8k-866" / "manifest.jsonl"
TARGET_RATIO_VS_SEPARATE = 4.1
TARGET_RATIO_VS_PLAIN = 0.9


def docci_descriptions(n: int, seed: int) -> list[str]:
    texts = [json.loads(line)["DOCCI"] for line in DOCCI.read_text(encoding="utf-8").splitlines() if line.strip()]
    return random.Random(seed).sample(texts, min(n, len(texts)))


def flickr_captions(n: int, seed: int) -> list[str]:
    rows = [json.loads(line) for line in FLICKR.read_text(encoding="utf-8").splitlines()]
    caps = [c for row in rows for c in row.get("en", [])]
    return random.Random(seed).sample(caps, min(n, len(caps)))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def plain_forward(encoder: TextEncoder, captions: list[str], facet_set: str) -> None:
    """The same token rows as the single pass, as ordinary causal sequences (padding mask only)."""
    rows = []
    for caption in captions:
        item = encoder.prompt_tokens(caption, facet_set)
        rows.append(item.prefix + [t for facet in item.facets for t in facet])
    for chunk in length_batches([len(r) for r in rows], encoder.config.batch_size):
        separate_forward(encoder.decoder, [rows[i] for i in chunk], encoder.pad_id)


def op_profile(encoder: TextEncoder, captions: list[str], facet_set: str, top: int = 10) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        encoder.encode(captions, facet_set)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "self_cpu_share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in events[:top]]


def compare(encoder: TextEncoder, captions: list[str], facet_set: str, rounds: int, chunk: int) -> dict:
    """Time the three paths on the same captions, interleaved chunk by chunk so that any
    drift of the machine's speed hits all three alike; totals over every round count."""
    encoder.encode(captions[:chunk], facet_set)  # warm-up (kernels, allocator), every path
    encoder.encode_separate(captions[:chunk], facet_set)
    plain_forward(encoder, captions[:chunk], facet_set)
    times = {"single": [], "separate": [], "plain": []}
    single = separate = stats = None
    for _ in range(rounds):
        spent = dict.fromkeys(times, 0.0)
        singles, separates = [], []
        for start in range(0, len(captions), chunk):
            part = captions[start:start + chunk]
            (out, st), t = timed(lambda: encoder.encode_with_stats(part, facet_set))
            spent["single"] += t
            singles.append((out, st))
            out, t = timed(lambda: encoder.encode_separate(part, facet_set))
            spent["separate"] += t
            separates.append(out)
            _, t = timed(lambda: plain_forward(encoder, part, facet_set))
            spent["plain"] += t
        for key in times:
            times[key].append(spent[key])
        single = torch.cat([out for out, _ in singles])
        separate = torch.cat(separates)
        stats = (sum(st.tokens for _, st in singles), sum(st.truncated for _, st in singles))
    t_single, t_sep, t_plain = (sum(times[k]) / rounds for k in ("single", "separate", "plain"))
    tokens, truncated = stats
    sep_tokens = sum(len(s) for c in captions for s in encoder.facet_token_ids(c, facet_set))
    rel = ((single - separate).abs().amax(-1) / separate.norm(dim=-1)).max().item()
    cos = torch.nn.functional.cosine_similarity(single, separate, dim=-1).min().item()
    return {
        "facet_set": facet_set,
        "K": encoder.num_facets(facet_set),
        "captions": len(captions),
        "truncated": truncated,
        "mean_caption_tokens": round(sum(len(encoder._ids(c)) for c in captions) / len(captions), 1),
        "single_pass": {"seconds": round(t_single, 3), "captions_per_s": round(len(captions) / t_single, 2),
                        "prompts_per_s": round(len(captions) * encoder.num_facets(facet_set) / t_single, 2),
                        "tokens": tokens, "tokens_per_s": round(tokens / t_single, 1)},
        "separate_passes": {"seconds": round(t_sep, 3), "captions_per_s": round(len(captions) / t_sep, 2),
                            "tokens": sep_tokens, "tokens_per_s": round(sep_tokens / t_sep, 1)},
        "plain_forward": {"seconds": round(t_plain, 3), "tokens": tokens, "tokens_per_s": round(tokens / t_plain, 1)},
        "seconds_per_round": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "token_bound": round(sep_tokens / tokens, 2),
        "ratio_vs_separate": round(t_sep / t_single, 2),
        "ratio_vs_plain_forward": round(t_plain / t_single, 3),
        "ratio_vs_separate_per_round": [round(b / a, 2) for a, b in zip(times["single"], times["separate"])],
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
    parser.add_argument("--profile", default="tiny", help="configuration profile (LLM, dtype, prompts)")
    parser.add_argument("--long-n", type=int, default=100, help="DOCCI descriptions to embed (7 long facets; 100 = all)")
    parser.add_argument("--short-n", type=int, default=48, help="Flickr8k captions for the short and raw sets (0: skip)")
    parser.add_argument("--store-n", type=int, default=16, help="flickr8k-866 images embedded into a store (0: skip)")
    parser.add_argument("--long-max-tokens", type=int, default=512, help="text.max_tokens for the long set")
    parser.add_argument("--rounds", type=int, default=2, help="timing rounds (each path's mean over them counts)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="captions per interleaved step (default: text.batch_size, so each step is one batch)")
    parser.add_argument("--op-profile", action="store_true", help="add the top operators of one long single pass")
    parser.add_argument("--batch-size", type=int, default=None, help="text.batch_size for every path (default: the profile's)")
    parser.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default=None,
                        help="text.dtype for every path (default: the profile's; auto picks bf16 only where it is fast)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 avoids spin-wait stalls on a busy shared CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not DOCCI.is_file() or not FLICKR.is_file():
        sys.exit(f"benchmark data not found under {SHARED}")

    config = load_config(ROOT / "params.yaml", args.profile)
    if args.batch_size:
        config.text.batch_size = args.batch_size
    if args.dtype:
        config.text.dtype = args.dtype
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

    docci = docci_descriptions(args.long_n, args.seed)
    chunk = args.chunk or config.text.batch_size
    long_result = compare(long_encoder, docci, "long", args.rounds, chunk)
    result = {
        "benchmark": "embed_throughput",
        "llm": config.text.llm,
        "dtype": encoder.dtype_name,
        "device": str(encoder.device),
        "threads": torch.get_num_threads(),
        "layer": encoder.layer,
        "separator": encoder.separator_token,
        "llm_load_seconds": {"first_load_convert_and_cache": round(load_first, 2), "cached_load": round(load_again, 2)},
        "ratio_vs_separate": long_result["ratio_vs_separate"],
        "target_ratio_vs_separate": TARGET_RATIO_VS_SEPARATE,
        "token_bound_vs_separate": long_result["token_bound"],
        "ratio_vs_plain_forward": long_result["ratio_vs_plain_forward"],
        "target_ratio_vs_plain_forward": TARGET_RATIO_VS_PLAIN,
        "long": long_result,
    }
    if args.op_profile:
        result["long_single_pass_top_ops"] = op_profile(long_encoder, docci, "long")
    if args.short_n:
        shorts = flickr_captions(args.short_n, args.seed)
        result["short"] = compare(encoder, shorts, "short", args.rounds, chunk)
        result["raw"] = compare(encoder, shorts, "raw", args.rounds, chunk)
    if args.store_n:
        result["store"] = store_bytes_per_sample(config, encoder, args.store_n)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
