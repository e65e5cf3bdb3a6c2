"""The cost model of docs/scaling.md: GPU-hours, bytes and network transfer for CC3M and YFCC15M
at the ``paper`` profile, built from figures measured on this machine and scaled by FLOPs.

Usage: python benchmarks/cost_model.py [--captions 200] [--out benchmarks/results/cost_model.json]

Measured here (``measured`` in the JSON), on real data from ../shared/data:
- tokens per caption of each of the paper profile's three views, with the default LLM's
  tokenizer and the project's own prompts: ``raw`` and ``short`` on Flickr8k captions (short
  alt-text-like captions), ``long`` on DOCCI descriptions (long captions), at max_tokens 512;
- forward FLOPs per image of the paper's image tower (ViT-B/16 at 224 px) and of its
  projector, counted by ``torch.utils.flop_counter`` on the real modules;
- FLOPs of the training loss (the sigmoid loss of the paper profile) at small batches, which
  fixes its coefficient in ``2 * B * m * D`` per image;
- JPEG bytes per image after the paper's resize (256 px, center crop, quality 95) on Flickr8k photos;
- this CPU's achieved FLOP/s for the LLM pass (SmolLM2-135M, the long facet set), for scale.

Assumed (``assumptions``, each stated with its value): dataset sizes and download success,
the 12B LLM's parameter count and width, peak GPU FLOP/s and the utilisation reached, and prices.
Everything else is arithmetic on these two lists.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from flame.config import load_config  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
FLICKR = SHARED / "flickr8k-866"
DOCCI = SHARED / "iiw-long-descriptions" / "DOCCI_Test.jsonl"

ASSUMPTIONS = {
    "datasets": {
        # Image-text pairs listed, and the share still downloadable (dead links).
        "CC3M": {"pairs": 3_318_333, "download_success": 0.85},
        "YFCC15M": {"pairs": 15_000_000, "download_success": 0.90},
    },
    # Mistral-Nemo-Instruct-2407 (the paper profile's text.llm): parameters and hidden width.
    "llm_params": 12.2e9,
    "llm_hidden": 5120,
    # FLOPs per token of a forward pass: 2 per parameter (attention over <=512 tokens adds <5%).
    "flops_per_param_token": 2,
    # H100/H200 SXM dense bf16 peak, and the share of it reached: a batched prefill without
    # generation, and ViT training with a large global batch.
    "gpu_peak_bf16_flops": 989e12,
    "mfu_llm_prefill": 0.40,
    "mfu_training": 0.35,
    "embedding_store_bytes_per_value": 2,  # float16, flame.text.store.STORE_DTYPE
    # Prices (USD): on-demand GPU-hour, S3 standard storage per GB-month, transfer per GB.
    "usd_per_gpu_hour": 3.0,
    "usd_per_gb_month_s3": 0.023,
    "usd_per_gb_same_region": 0.0,
    "usd_per_gb_cross_region": 0.02,
    "usd_per_gb_internet_egress": 0.09,
}


def flickr_captions(n: int, seed: int) -> list[str]:
    rows = [json.loads(line) for line in (FLICKR / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    captions = [c for row in rows for c in row.get("en", [])]
    return random.Random(seed).sample(captions, min(n, len(captions)))


def docci_descriptions(n: int, seed: int) -> list[str]:
    texts = [json.loads(line)["DOCCI"] for line in DOCCI.read_text(encoding="utf-8").splitlines() if line.strip()]
    return random.Random(seed).sample(texts, min(n, len(texts)))


def measure_tokens_and_cpu_rate(n: int, seed: int) -> dict:
    """Tokens each view's prompts cost per caption (the shared-prefix pass: the prefix once, then
    every facet), and this CPU's FLOP/s on the long view."""
    from flame.text.encoder import TextEncoder

    config = load_config(None, "tiny", overrides={"text": {"max_tokens": 512}}).text
    encoder = TextEncoder.from_config(config)
    texts = {"raw": flickr_captions(n, seed), "short": flickr_captions(n, seed + 1), "long": docci_descriptions(n, seed)}
    tokens = {}
    for view, captions in texts.items():
        items = [encoder.prompt_tokens(c, view) for c in captions]
        tokens[view] = {"tokens_per_caption": round(sum(i.token_count for i in items) / len(items), 1),
                        "truncated_share": round(sum(i.truncated for i in items) / len(items), 3),
                        "facets": encoder.num_facets(view), "captions": len(items)}
    decoder_params = sum(p.numel() for name, p in encoder.decoder.named_parameters() if "embed" not in name)
    long_captions = texts["long"][: max(16, n // 4)]
    encoder.encode_with_stats(long_captions[:8], "long")  # warm-up
    start = time.perf_counter()
    _, stats = encoder.encode_with_stats(long_captions, "long")
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "llm_non_embedding_params": decoder_params, "llm_dtype": encoder.dtype_name,
            "cpu_llm_tokens_per_s": round(stats.tokens / seconds, 1),
            "cpu_llm_flops_per_s": round(2 * decoder_params * stats.tokens / seconds / 1e9, 2) * 1e9,
            "cpu_llm_captions_per_s_long": round(len(long_captions) / seconds, 2)}


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure_training_flops(llm_hidden: int) -> dict:
    """Forward FLOPs per image of the paper's ViT-B/16 and projector, and the loss coefficient."""
    import timm

    from flame.train.distributed import DistContext
    from flame.train.losses import get_loss

    paper = load_config(None, "paper")
    vit = timm.create_model(paper.image.model, pretrained=False, num_classes=0).eval()
    image = torch.randn(1, 3, paper.image.img_size, paper.image.img_size)
    with torch.no_grad():
        vit_flops = count_flops(lambda: vit(image))
    width, hidden = vit.num_features, paper.image.projector_hidden
    projector = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, llm_hidden),
                                    torch.nn.LayerNorm(llm_hidden))
    with torch.no_grad():
        projector_flops = count_flops(lambda: projector(torch.randn(1, width)))
    loss_fn = get_loss(paper.train.loss)
    coefficients = []
    for batch, m, dim in ((16, 2, 64), (32, 3, 64), (32, 2, 128)):
        img = torch.nn.functional.normalize(torch.randn(batch, dim), dim=-1)
        txt = torch.nn.functional.normalize(torch.randn(batch, m, dim), dim=-1)
        flops = count_flops(lambda: loss_fn(img, txt, torch.tensor(2.3), torch.tensor(-10.0), ctx=DistContext()))
        coefficients.append(flops / (batch * batch * m * dim))
    return {"vit_forward_flops_per_image": vit_flops, "projector_forward_flops_per_image": projector_flops,
            "loss_forward_flops_coefficient": round(sum(coefficients) / len(coefficients), 3),
            "loss_coefficients_at_small_batches": [round(c, 3) for c in coefficients],
            "image_model": paper.image.model, "img_size": paper.image.img_size}


def measure_jpeg_bytes(n: int, seed: int, size: int) -> dict:
    """Bytes per image as img2dataset stores them for the paper profile (center crop to ``size``, quality 95)."""
    from PIL import Image, ImageOps

    rows = [json.loads(line) for line in (FLICKR / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = random.Random(seed).sample(rows, min(n, len(rows)))
    sizes = []
    for row in rows:
        with Image.open(FLICKR / row["image"]) as img:
            fitted = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        fitted.save(buf, format="JPEG", quality=95)
        sizes.append(buf.tell())
    return {"jpeg_bytes_per_image": round(sum(sizes) / len(sizes)), "images": len(sizes), "size": size,
            "note": "source photos are downscaled copies (longest side 256 px): upscaled crops compress a little "
                    "better than full-resolution sources would"}


def cost_table(measured: dict, a: dict) -> dict:
    paper = load_config(None, "paper")
    views = measured["llm"]["tokens"]
    tokens_per_sample = sum(v["tokens_per_caption"] for v in views.values())
    k = sum(v["facets"] for v in views.values())
    flops_per_token = a["flops_per_param_token"] * a["llm_params"]
    t = measured["training"]
    batch, m, dim = paper.train.batch_size, paper.train.positives_per_image, a["llm_hidden"]
    # Forward, then backward at twice the forward; the loss's logits scale with the global batch.
    loss_per_image = t["loss_forward_flops_coefficient"] * batch * m * dim
    train_per_image_epoch = 3 * (t["vit_forward_flops_per_image"] + t["projector_forward_flops_per_image"] + loss_per_image)
    table = {}
    for name, d in a["datasets"].items():
        samples = d["pairs"] * d["download_success"]
        embed_gpu_h = samples * tokens_per_sample * flops_per_token / (a["gpu_peak_bf16_flops"] * a["mfu_llm_prefill"]) / 3600
        train_gpu_h = samples * paper.train.epochs * train_per_image_epoch / (a["gpu_peak_bf16_flops"] * a["mfu_training"]) / 3600
        shard_gb = samples * measured["shards"]["jpeg_bytes_per_image"] / 1e9
        store_gb = samples * k * dim * a["embedding_store_bytes_per_value"] / 1e9
        # Without a node-local cache every epoch reads every shard and every embedding once.
        read_per_training_gb = paper.train.epochs * (shard_gb + store_gb)
        table[name] = {
            "samples": round(samples),
            "embedding_gpu_hours": round(embed_gpu_h, 1),
            "training_gpu_hours": round(train_gpu_h, 1),
            "training_hours_on_8_gpus": round(train_gpu_h / 8, 1),
            "shards_gb": round(shard_gb, 1),
            "embedding_store_gb": round(store_gb, 1),
            "read_per_training_gb": round(read_per_training_gb),
            "usd_gpu": round((embed_gpu_h + train_gpu_h) * a["usd_per_gpu_hour"]),
            "usd_storage_per_month": round((shard_gb + store_gb) * a["usd_per_gb_month_s3"], 2),
            "usd_network_same_region": round(read_per_training_gb * a["usd_per_gb_same_region"], 2),
            "usd_network_cross_region": round(read_per_training_gb * a["usd_per_gb_cross_region"]),
            "usd_network_internet_egress": round(read_per_training_gb * a["usd_per_gb_internet_egress"]),
        }
    per_image = {"vit": t["vit_forward_flops_per_image"], "projector": t["projector_forward_flops_per_image"],
                 "loss": round(loss_per_image)}
    return {"tokens_per_sample": tokens_per_sample, "K": k, "llm_flops_per_token": flops_per_token,
            "training_forward_flops_per_image": per_image, "training_flops_per_image_epoch": round(train_per_image_epoch),
            "datasets": table}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--captions", type=int, default=200, help="captions (and descriptions) measured per view")
    p.add_argument("--images", type=int, default=100, help="photos measured for JPEG bytes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args()
    if not FLICKR.is_dir() or not DOCCI.is_file():
        sys.exit(f"cost_model: needs {FLICKR} and {DOCCI} (../shared/data)")
    torch.manual_seed(args.seed)
    paper = load_config(None, "paper")
    measured = {
        "llm": measure_tokens_and_cpu_rate(args.captions, args.seed),
        "training": measure_training_flops(ASSUMPTIONS["llm_hidden"]),
        "shards": measure_jpeg_bytes(args.images, args.seed, paper.data.image_size),
        "threads": torch.get_num_threads(),
    }
    result = {"measured": measured, "assumptions": ASSUMPTIONS, "model": cost_table(measured, ASSUMPTIONS)}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
