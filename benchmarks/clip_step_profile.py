"""Where the CLIP baseline's training step spends its time, against FLAME's, on this CPU.

Both steps are the trainer's own TrainStep on the towers of benchmarks/flame_vs_clip.py (its
BENCH_OVERRIDES on the tiny profile): FLAME against precomputed text embeddings, CLIP with its
text transformer trained from scratch on real sample captions. Each is timed with the plain
(math) attention kernel and with PyTorch's fused one, interleaved in rounds so that both share
the machine's load. One profiled CLIP step splits its time among the optimizer, attention and
the rest. Prints one JSON object of ratios; the absolute times only say how busy the machine was.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.flame_vs_clip import BENCH_OVERRIDES  # noqa: E402
from flame.config import load_config  # noqa: E402
from flame.losses import get_loss  # noqa: E402
from flame.model import FlameModel  # noqa: E402
from flame.model.clip_text import clip_text_config, tokenize  # noqa: E402
from flame.train.distributed import DistContext  # noqa: E402
from flame.train.optim import build_optimizer, build_scheduler  # noqa: E402
from flame.train.precision import resolve_precision  # noqa: E402
from flame.train.step import TrainStep  # noqa: E402
from flame.train.text_modes.clip import ClipMode  # noqa: E402
from flame.train.text_modes.frozen_llm import FrozenLLMMode  # noqa: E402

LLM_WIDTH = 576  # SmolLM2-135M's hidden size: the width both modes project the image into


def sample_captions(count: int) -> list[str]:
    rows = (ROOT / "data" / "sample" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    return [c for row in rows for c in json.loads(row)["captions"]][:count]


def step_runner(config, mode: str, kernel: str, batch: int):
    """A closure running one TrainStep of ``mode`` on a fixed batch, and its model."""
    torch.manual_seed(0)
    m, train = config.train.positives_per_image, config.train
    if mode == "clip":
        model = FlameModel(config.image, config.clip_text.embed_dim, text_config=clip_text_config(config),
                           text_mode="clip")
        features = ClipMode(config, Path(".")).features
        texts = tokenize(sample_captions(batch * m), config.clip_text.context_length).reshape(batch, m, -1)
    else:
        model = FlameModel(config.image, LLM_WIDTH, text_config=config.text.model_dump(mode="json"))
        features = FrozenLLMMode.features
        texts = F.normalize(torch.randn(batch, m, LLM_WIDTH), dim=-1)
    optimizer = build_optimizer(model, train)
    step = TrainStep(model, model, features, optimizer, build_scheduler(optimizer, train, 10_000),
                     get_loss(train.loss), resolve_precision(train.precision, torch.device("cpu")),
                     train.grad_clip, train.max_logit_scale, DistContext(), kernel)
    pixels = torch.randn(batch, 3, config.image.img_size, config.image.img_size)
    return (lambda: step(pixels, texts)), model


def time_split(run) -> dict:
    """Shares of one profiled step: the optimizer update, attention (forward and backward), the rest."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    optimizer = sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step"))
    attention = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
    return {"optimizer": round(optimizer / total, 3), "attention": round(attention / total, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="images per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and runner")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    args = parser.parse_args()

    config = load_config(profile="tiny", overrides=BENCH_OVERRIDES)
    runners, models = {}, {}
    for mode in ("flame", "clip"):
        for kernel in ("math", "default"):
            runners[f"{mode}_{kernel}"], models[mode] = step_runner(config, mode, kernel, args.batch)
    for run in runners.values():  # warm-up: allocator, oneDNN kernels
        run()
    seconds = dict.fromkeys(runners, 0.0)
    for _ in range(args.rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                run()
            seconds[name] += time.perf_counter() - start
    img_s = {name: args.steps * args.rounds * args.batch / secs for name, secs in seconds.items()}
    clip_params = sum(p.numel() for p in models["clip"].parameters())
    token_table = models["clip"].text.transformer.token_embedding.weight.numel()
    print(json.dumps({
        "batch": args.batch, "threads": torch.get_num_threads(), "timed_steps": args.steps * args.rounds,
        "img_per_s": {name: round(v, 1) for name, v in img_s.items()},
        "clip_cost_vs_flame": {k: round(img_s[f"flame_{k}"] / img_s[f"clip_{k}"], 2) for k in ("math", "default")},
        "math_kernel_speedup": {m: round(img_s[f"{m}_math"] / img_s[f"{m}_default"], 2) for m in ("flame", "clip")},
        "clip_step_time_shares": {k: time_split(runners[f"clip_{k}"]) for k in ("math", "default")},
        "clip_trainable_params": clip_params,
        "clip_token_table_share_of_params": round(token_table / clip_params, 3),
        "flame_trainable_params": sum(p.numel() for p in models["flame"].parameters()),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
