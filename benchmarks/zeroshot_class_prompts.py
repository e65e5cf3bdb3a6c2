"""Zero-shot class prompts at ImageNet-1k size: time ``flame evaluate`` twice, as one JSON object.

Usage: python benchmarks/zeroshot_class_prompts.py [--profile tiny] [--classes 1000]

Writes, in a temporary folder, a manifest of torchvision's 1,000 ImageNet category names
(one bundled sample image each) and a freshly initialised checkpoint of the profile, then
runs ``flame evaluate --manifest ... --task zeroshot_classification`` twice against an
empty evaluation-text cache. The first run embeds every class prompt (classes x the
profile's ``eval.templates``); the second embeds none. Reported: wall seconds of each
run, the cache parts each wrote (the second: 0) and the ``text_protocol`` recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torchvision.models._meta import _IMAGENET_CATEGORIES  # noqa: E402

from flame.config import load_config  # noqa: E402
from flame.model import FlameModel, ModelConfig  # noqa: E402
from flame.text import encoder_from_config  # noqa: E402


def write_inputs(folder: Path, profile: str, classes: int) -> tuple[Path, Path]:
    dev = [json.loads(line) for line in (ROOT / "data" / "sample" / "dev.jsonl").read_text(encoding="utf-8").splitlines()]
    names = list(dict.fromkeys(_IMAGENET_CATEGORIES))[:classes]
    manifest = folder / "imagenet1k_classes.jsonl"
    with manifest.open("w", encoding="utf-8") as fh:
        for i, name in enumerate(names):
            image = ROOT / "data" / "sample" / dev[i % len(dev)]["url"]
            fh.write(json.dumps({"image": str(image), "label": name}) + "\n")
    config = load_config(ROOT / "params.yaml", profile)
    encoder = encoder_from_config(config.text)
    torch.manual_seed(0)
    model = FlameModel(ModelConfig(embed_dim=encoder.hidden_size, image=config.image, text=config.text.model_dump(mode="json"),
                                   text_fingerprint=encoder.fingerprint))
    return manifest, model.save(folder / "checkpoint")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny", help="configuration profile (LLM, prompts, eval.templates)")
    parser.add_argument("--classes", type=int, default=1000, help="how many ImageNet class names (at most 1000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flame-bench-zeroshot-") as tmp:
        folder = Path(tmp)
        manifest, checkpoint = write_inputs(folder, args.profile, args.classes)
        env = {**os.environ, "FLAME_EVAL_CACHE": str(folder / "eval-cache")}
        runs = []
        for i in (1, 2):
            out = folder / f"result{i}.json"
            command = [sys.executable, "-m", "flame", "evaluate", "--profile", args.profile, "--checkpoint", str(checkpoint),
                       "--manifest", str(manifest), "--task", "zeroshot_classification", "--no-plots", "--out", str(out)]
            start = time.perf_counter()
            proc = subprocess.run(command, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit(proc.stderr[-2000:])
            parts = len(list((folder / "eval-cache").rglob("part-*.safetensors")))
            runs.append({"seconds": round(seconds, 1), "cache_parts": parts, "result": json.loads(out.read_text(encoding="utf-8"))})
        first = runs[0]["result"]
        protocol = first["text_protocol"]
        print(json.dumps({
            "benchmark": "zeroshot_class_prompts",
            "profile": args.profile,
            "classes": first["details"]["n_classes"],
            "templates": protocol.get("templates"),
            "class_prompts": first["details"]["n_classes"] * protocol.get("n_templates", 1),
            "first_run_seconds": runs[0]["seconds"],
            "second_run_seconds": runs[1]["seconds"],
            "second_over_first": round(runs[1]["seconds"] / runs[0]["seconds"], 3),
            "cache_parts_written": [runs[0]["cache_parts"], runs[1]["cache_parts"] - runs[0]["cache_parts"]],
            "text_protocol": protocol,
            "threads": torch.get_num_threads(),
        }))


if __name__ == "__main__":
    main()
