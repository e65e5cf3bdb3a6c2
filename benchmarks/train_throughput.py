"""Training throughput of this loop against open_clip's own training step, on this CPU.

Same ViT (the tiny profile's: ViT-Tiny at its depth, patch and image.img_size), same batch, same
precision. open_clip trains its CLIP model (ViT + text transformer) with ClipLoss;
FLAME trains the ViT + projector against precomputed text embeddings (random,
L2-normalised, the LLM's width) with its configured multi-positive loss.

Measured in one run, interleaved in rounds to share the machine's load fairly:
- ``flame_step``: this loop's TrainStep on ready batches (step-only);
- ``open_clip_step``: open_clip's forward + ClipLoss + AdamW step on ready batches;
- ``flame_loop``: the whole ``run_training`` on real JPEG shards (data/sample),
  DataLoader workers included: img/s and the share of step time spent waiting for data;
- bf16 vs fp32 for the FLAME step.

Prints one JSON object; ``ratio_vs_open_clip`` = flame_loop img/s / open_clip_step img/s.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flame.config import load_config  # noqa: E402
from flame.model import FlameModel, ModelConfig  # noqa: E402
from flame.text.store import EmbeddingStore  # noqa: E402
from flame.text_modes.clip import ClipTraining, clip_text_config, tokenize  # noqa: E402
from flame.text_modes.frozen_llm import FrozenLLMTraining  # noqa: E402
from flame.train import run_training  # noqa: E402
from flame.train.distributed import DistContext  # noqa: E402
from flame.train.losses import get_loss  # noqa: E402
from flame.train.optim import build_optimizer, build_scheduler  # noqa: E402
from flame.train.precision import autocast, resolve_precision  # noqa: E402
from flame.train.step import TrainStep  # noqa: E402

SAMPLE = ROOT / "data" / "sample"
LLM_WIDTH = 576  # SmolLM2-135M's hidden size (the tiny profile's text encoder)


def write_sample_shards(directory: Path, count: int, per_shard: int) -> list[str]:
    """webdataset tars (key.jpg/.txt/.json) of the first ``count`` sample images."""
    rows = [json.loads(line) for line in (SAMPLE / "train.jsonl").read_text().splitlines()[:count]]
    captions = []
    for start in range(0, len(rows), per_shard):
        with tarfile.open(directory / f"{start // per_shard:05d}.tar", "w") as tar:
            for i, row in enumerate(rows[start:start + per_shard], start):
                key = f"{start // per_shard:05d}{i:04d}"
                for ext, data in (("jpg", (SAMPLE / row["url"]).read_bytes()), ("txt", row["caption"].encode()),
                                  ("json", json.dumps({"key": key, "captions": row["captions"]}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                captions.append(row["caption"])
    return captions


def write_random_store(root: Path, shards: Path, k: int) -> Path:
    from flame.data.shards import iter_shard, list_shards, shard_name
    from flame.digest import sha256_file

    store = EmbeddingStore.create(root, {"K": k, "D": LLM_WIDTH, "fingerprint": "benchmark0000000",
                                         "fingerprint_inputs": {"benchmark": True}, "layout": []})
    for path in list_shards(shards):
        keys = [s.key for s in iter_shard(path, with_images=False)]
        store.write(shard_name(path), keys, F.normalize(torch.randn(len(keys), k, LLM_WIDTH), dim=-1),
                    input_digest=sha256_file(path))
    return store.path


def sample_captions(count: int) -> list[str]:
    rows = (SAMPLE / "train.jsonl").read_text(encoding="utf-8").splitlines()
    return [c for row in rows for c in json.loads(row)["captions"]][:count]


def step_runner(config, batch: int, *, mode: str = "flame", precision: str | None = None, attention: str = "auto"):
    """A closure running this loop's TrainStep of ``mode`` on one fixed batch, and its model. FLAME
    trains against random L2-normalised texts of the LLM's width, CLIP on real sample captions.
    ``precision``: default the profile's (resolved for the CPU)."""
    torch.manual_seed(0)
    m, train = config.train.positives_per_image, config.train
    if mode == "clip":
        model = FlameModel(ModelConfig(embed_dim=config.clip_text.embed_dim, image=config.image, text_mode="clip",
                                       text=clip_text_config(config)))
        features = ClipTraining(config, Path(".")).features
        texts = tokenize(sample_captions(batch * m), config.clip_text.context_length).reshape(batch, m, -1)
    else:
        model = FlameModel(ModelConfig(embed_dim=LLM_WIDTH, image=config.image, text=config.text.model_dump(mode="json")))
        features = FrozenLLMTraining.features
        texts = F.normalize(torch.randn(batch, m, LLM_WIDTH), dim=-1)
    optimizer = build_optimizer(model, train)
    step = TrainStep(model, model, features, optimizer, build_scheduler(optimizer, train, 10_000),
                     get_loss(train.loss), precision or resolve_precision(train.precision, torch.device("cpu")),
                     train.grad_clip, train.max_logit_scale, DistContext(), attention)
    pixels = torch.randn(batch, 3, config.image.img_size, config.image.img_size)
    return (lambda: step(pixels, texts)), model


def open_clip_step_runner(config, precision: str, batch: int, captions: list[str]):
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    vit = {"width": 192, "layers": config.image.model_kwargs.get("depth", 12), "head_width": 64, "mlp_ratio": 4.0,
           "patch_size": config.image.patch_size, "image_size": config.image.img_size}
    text = config.clip_text
    model = open_clip.CLIP(
        embed_dim=LLM_WIDTH, vision_cfg=CLIPVisionCfg(**vit),
        text_cfg=CLIPTextCfg(context_length=text.context_length, width=text.width, heads=text.heads,
                             layers=text.layers),
        output_dict=True,
    )
    loss_fn = open_clip.ClipLoss()
    tr = config.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=tr.lr, betas=tuple(tr.betas), eps=tr.eps,
                                  weight_decay=tr.weight_decay)
    pixels = torch.randn(batch, 3, config.image.img_size, config.image.img_size)
    tokens = open_clip.tokenize((captions * batch)[:batch], context_length=text.context_length)

    def step():  # as open_clip's training/train.py: autocast forward, loss, backward, step, clamp
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, torch.device("cpu")):
            out = model(pixels, tokens)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        if tr.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        return float(loss.detach())

    return step


def timed(step, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="images per step (both implementations)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round and implementation")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved measurement rounds")
    parser.add_argument("--loop-images", type=int, default=256, help="sample images for the end-to-end loop run")
    parser.add_argument("--profile", default="tiny", help="configuration profile for the image tower and train settings")
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    config = load_config(profile=args.profile)
    precision = resolve_precision(config.train.precision, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "shards").mkdir()
        captions = write_sample_shards(tmp / "shards", args.loop_images, per_shard=64)
        store = write_random_store(tmp / "emb", tmp / "shards", k=4)

        runners = {
            "flame_step": step_runner(config, args.batch, precision=precision)[0],
            "open_clip_step": open_clip_step_runner(config, precision, args.batch, captions),
            "flame_step_fp32": step_runner(config, args.batch, precision="fp32")[0],
        }
        if precision != "bf16":
            runners["flame_step_bf16"] = step_runner(config, args.batch, precision="bf16")[0]
        seconds = {name: 0.0 for name in runners}
        for name, step in runners.items():  # warm-up (allocator, oneDNN kernels)
            step()
        loop_summaries = []
        for _ in range(args.rounds):
            for name, step in runners.items():
                seconds[name] += timed(step, args.steps)
            overrides = {"train": {"batch_size": args.batch, "epochs": 1, "log_every_steps": 10_000}}
            loop_cfg = load_config(profile=args.profile, overrides=overrides)
            loop_summaries.append(run_training(loop_cfg, tmp / "shards", store, tmp / f"out{len(loop_summaries)}"))

    n = args.steps * args.rounds
    result = {"batch": args.batch, "img_size": config.image.img_size, "model": config.image.model,
              "patch_size": config.image.patch_size, "precision": precision, "threads": torch.get_num_threads(),
              "timed_steps": n}
    for name, secs in seconds.items():
        result[f"{name}_steps_per_s"] = round(n / secs, 4)
        result[f"{name}_img_per_s"] = round(n * args.batch / secs, 2)
    loop_img_s = sum(s["images_per_sec"] for s in loop_summaries) / len(loop_summaries)
    result["flame_loop_img_per_s"] = round(loop_img_s, 2)
    result["flame_loop_steps_per_s"] = round(loop_img_s / args.batch, 4)
    result["data_wait_share"] = round(max(s["data_wait_share"] for s in loop_summaries), 4)
    result["loop_workers"] = config.train.workers
    oc = result["open_clip_step_img_per_s"]
    result["ratio_vs_open_clip"] = round(loop_img_s / oc, 3)
    result["ratio_step_only_vs_open_clip"] = round(result["flame_step_img_per_s"] / oc, 3)
    bf16 = result.get("flame_step_bf16_img_per_s", result["flame_step_img_per_s"] if precision == "bf16" else None)
    result["bf16_speedup_vs_fp32"] = round(bf16 / result["flame_step_fp32_img_per_s"], 3) if bf16 else None
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
