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
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.flame_vs_clip import BENCH_OVERRIDES  # noqa: E402
from benchmarks.train_throughput import step_runner  # noqa: E402
from flame.config import load_config  # noqa: E402


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
            runners[f"{mode}_{kernel}"], models[mode] = step_runner(config, args.batch, mode=mode, attention=kernel)
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
