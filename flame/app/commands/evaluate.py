"""``flame evaluate``: score a checkpoint on named benchmarks or on a user's manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from evaluations.tasks import MANIFEST_TASKS as TASKS
from flame.atomic import write_json
from flame.errors import FlameError

HELP = "evaluate a checkpoint on benchmarks (zero-shot, retrieval, long, multilingual, linear probe) or a manifest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder (model.safetensors + model_config.json) from flame train")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--benchmark", action="append", metavar="NAME",
                        help="a registered benchmark, 'all' (every one whose data exists), or a comma list; "
                        "repeatable (default: eval.benchmarks of the configuration)")
    source.add_argument("--manifest", help="your own JSONL manifest: 'image' (path relative to it, or URL) with 'captions' or 'label'")
    parser.add_argument("--task", choices=TASKS, help="how to score --manifest (required with it)")
    parser.add_argument("--caption-field", help="manifest key holding the captions (default: 'captions', else 'caption'), e.g. zh")
    parser.add_argument("--label-field", help="manifest key holding the class name (default: 'label')")
    parser.add_argument("--languages", help="comma list for multilingual_retrieval, e.g. en,zh,de (default: every known language present)")
    parser.add_argument("--out", required=True, help="result JSON file; plots (PNG) are written beside it")
    parser.add_argument("--skip-missing", action="store_true", help="skip missing, unreadable or too large (image.max_pixels) images (counted in the result) instead of failing")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images (or text pairs) of each dataset, for quick checks")
    parser.add_argument("--templates", choices=("openai", "short", "single"),
                        help="zero-shot prompt templates: the 80 of CLIP, 7 of them, or 1 (default: eval.templates)")
    parser.add_argument("--batch-size", type=int, help="images/texts per forward pass (default: eval.batch_size)")
    parser.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")


def run(args: argparse.Namespace, config) -> int:
    # The runner and the model import torch: loaded once the arguments are parsed.
    from evaluations import runner
    from flame.model import load

    if args.manifest and not args.task:
        raise FlameError("--manifest needs --task (one of: " + ", ".join(TASKS) + ")")
    if args.task and not args.manifest:
        raise FlameError("--task applies to --manifest; benchmarks have their own task")
    if args.limit is not None and args.limit < 1:
        raise FlameError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size is not None and args.batch_size < 1:
        raise FlameError(f"--batch-size must be at least 1, got {args.batch_size}")
    updates = {k: v for k, v in {"templates": args.templates, "batch_size": args.batch_size}.items() if v is not None}
    if args.no_plots:
        updates["plots"] = False
    eval_config = config.eval.model_copy(update=updates)

    out = Path(args.out)
    model = load(args.checkpoint)
    common = dict(config=eval_config, out_dir=out.parent, skip_missing=args.skip_missing, limit=args.limit,
                  pretrained=str(args.checkpoint), plot_prefix=f"{out.stem}_", max_pixels=config.image.max_pixels)
    if args.manifest:
        languages = [s.strip() for s in args.languages.split(",") if s.strip()] if args.languages else None
        payload = runner.with_summary(runner.evaluate_manifest(
            model, args.manifest, args.task, caption_field=args.caption_field, label_field=args.label_field,
            languages=languages, **common))
    else:
        names = args.benchmark or eval_config.benchmarks
        run_names, _ = runner.expand_names(names)
        if len(run_names) == 1 and "all" not in ",".join(names).split(","):
            payload = runner.with_summary(runner.evaluate_benchmark(model, run_names[0], **common))
        else:
            payload = runner.evaluate_benchmarks(model, names, **common)
    write_json(out, payload)
    for s in payload.get("skipped", []):
        print(f"skipped {s['benchmark']}: {s['reason']}")
    for key, value in payload["summary"].items():
        if not key.split("/", 1)[1].startswith("chance_"):
            chance = payload["summary"].get(key.replace("/", "/chance_", 1))
            print(f"{key} = {value:.4f}" + (f"  (chance {chance:.4f})" if chance is not None else ""))
    print(f"wrote {out}")
    return 0
