"""FLAME (frozen LLM text side) against the CLIP baseline (text tower trained from scratch), at full
budget, and the data-efficiency curve.

Both modes train the same image tower with the same loss, data, batch, number of steps and seeds
through the same commands (``flame train``), and are scored by ``flame evaluate``. The stages:

1. Data. Every Flickr8k image of ../shared/data/flickr8k-866 outside the dev split (762: train + the
   few in no split), all 5 English captions each, downloaded once into shards of 128 images
   (``flame download``); the frozen LLM embeds every caption once (``flame embed``: a store keyed by
   the text encoder's fingerprint, filled shard by shard).
2. The CLIP baseline's learning rate, picked on dev: one short CLIP run per candidate (--clip-lrs,
   default half, equal to and twice the base profile's train.lr; --lr-search-epochs epochs, seed 0,
   every training image), scored by flickr8k-dev-retrieval mean_recall@5; the best one trains every
   CLIP seed. FLAME keeps the base profile's learning rate.
3. The comparison: every training image, --epochs epochs of batch --batch-size, one run per mode and
   seed (--seeds), scored on Flickr8k dev retrieval, long-caption retrieval (the 5 captions joined),
   multilingual retrieval and ImageNet-200x5 zero-shot.
4. The data-efficiency curve: dev mean R@5 against the number of training images (--sizes). A size
   of N images trains on the first N/128 shards for as many steps as the full size (equal compute:
   epochs = ceil(full-size steps / steps per epoch at that size)), with the --size-seeds, and is
   scored on flickr8k-dev-retrieval only; the full size reuses the comparison's runs (every seed).

Every run is a folder under --work named by what it trains (mode, images, epochs, lr, seed); a run
whose training summary exists is not retrained, an evaluation whose result file exists is not
redone, and the frozen LLM's benchmark text embeddings are shared through ``flame evaluate``'s text
cache ($FLAME_CACHE/eval-text). Rerun the same command to continue after a stop; nothing finished
is embedded or trained again. ``--aggregate-only`` writes the results from the completed runs.

Writes, in --results: flame_vs_clip.{json,md} ({flame, clip: {metric: {mean, std, values}}, budget},
the budget recording the learning-rate search), flame_vs_clip_{training,recall}.png,
data_efficiency.json (one entry per mode, size and seed) and data_efficiency.png; with
``--tracking-uri`` it logs them all to one MLflow run. Prints the comparison JSON.

Cost of the defaults on 2 idle CPU cores, at FLAME's ~300 and CLIP's ~130 training images/s: every run
makes 110 steps of 64 images (10 epochs of 11 full batches), so 3 + 3 comparison runs, 3 learning-rate
runs of 33 steps and 2 x 2 smaller-size runs of 110+ steps train for roughly 8 minutes in all. The
one-off embedding of 3,810 captions and the 31 evaluations (each a fresh process; the frozen LLM's
benchmark texts are embedded once, then cached) come on top.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.data_efficiency import write_data_efficiency  # noqa: E402
from benchmarks.flame_vs_clip_report import finish  # noqa: E402
from benchmarks.flame_vs_clip_runs import (  # noqa: E402
    BENCH_OVERRIDES,
    DEV_BENCHMARK,
    EVAL_LIMITS,
    HEADLINE,
    MODES,
    SHARD_SIZE,
    Run,
    Runner,
    Subset,
    describe_search,
    equal_compute_epochs,
    flame_cli,  # noqa: F401 - re-exported: benchmarks/demo_sweep.py imports it from here
    prepare_data,
    search_clip_lr,
)

DATA = ROOT.parent / "shared" / "data"
BENCHMARKS = ("flickr8k-dev-retrieval", "flickr8k-dev-long", "flickr8k-dev-multilingual", "imagenet-200x5-zeroshot")
# Flags that define what is trained and measured: the budget's command line names those not at their default.
BUDGET_FLAGS = ("data", "epochs", "batch_size", "warmup_steps", "workers", "seeds", "base_profile", "clip_lrs",
                "lr_search_epochs", "sizes", "size_seeds", "limit")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--work", default=str(ROOT / "outputs" / "flame_vs_clip"),
                   help="working folder for the manifest, shards, embeddings, run checkpoints and evaluations")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"),
                   help="where flame_vs_clip.json/.md, data_efficiency.json and the PNG plots are written")
    p.add_argument("--data", default=str(DATA / "flickr8k-866"), help="the flickr8k-866 folder (manifest.jsonl + images/)")
    p.add_argument("--seeds", default="0,1,2",
                   help="comma list of training seeds of the comparison (each mode trains once per seed)")
    p.add_argument("--modes", default="flame,clip",
                   help="modes to train and evaluate in this invocation (e.g. 'clip' while the embeddings are made "
                   "elsewhere); the results files are written once both modes have run")
    p.add_argument("--epochs", type=int, default=10,
                   help="training epochs of the comparison on every training image; this sets the number of steps "
                   "of every run of the comparison and of the data-efficiency curve (not of the lr search)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size of every run")
    p.add_argument("--warmup-steps", type=int, default=10, help="LR warm-up steps of every run")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers of every run")
    p.add_argument("--base-profile", default="tiny",
                   help="profile of params.yaml both modes extend (image tower, loss, FLAME's learning rate)")
    p.add_argument("--clip-lrs", default=None,
                   help="comma list of candidate learning rates of the CLIP baseline, the best on dev trains every "
                   "CLIP seed; one value skips the search (default: 0.5x, 1x and 2x the base profile's train.lr, "
                   "i.e. 2.5e-4,5e-4,1e-3 for tiny)")
    p.add_argument("--lr-search-epochs", type=int, default=3,
                   help="epochs of each learning-rate search run (seed 0, every training image)")
    p.add_argument("--sizes", default=f"{SHARD_SIZE},{3 * SHARD_SIZE},all",
                   help=f"training-set sizes of the data-efficiency curve, in images (the first N/{SHARD_SIZE} "
                   "shards, rounded up) or 'all'; the full size is the comparison's runs")
    p.add_argument("--size-seeds", default="0",
                   help="comma list of the seeds trained at the smaller sizes (the full size has every --seeds)")
    p.add_argument("--aggregate-only", action="store_true",
                   help="download, embed, train and evaluate nothing: write the results from the runs of --work "
                   "that are complete (give the budget flags the runs were made with)")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate only the first N images of each benchmark (quick checks; their result files are "
                   "kept apart from the full evaluations')")
    p.add_argument("--tracking-uri", default=None, help="also log the results and plots to this MLflow tracking URI")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def int_list(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv=None) -> dict:
    args = parse_args(argv)
    work, results_dir = Path(args.work), Path(args.results)
    work.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runner = Runner(args, work, execute=not args.aggregate_only)
    modes = list(MODES) if args.aggregate_only else [m.strip() for m in args.modes.split(",") if m.strip()]

    sets, embed_seconds = prepare_data(runner, args, modes)
    full = sets[-1]
    lr_search = search_clip_lr(runner, full, args) if "clip" in modes else None
    lrs = {"flame": runner.base_lr, "clip": lr_search and lr_search["chosen"]}

    compare: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for seed in int_list(args.seeds):  # paired by seed, so a stopped benchmark still has comparable runs
        for mode in modes:
            record = runner.obtain(Run(mode, seed, args.epochs, lrs[mode], full, BENCHMARKS), "comparison")
            if record:
                compare[mode].append(record)

    full_steps = args.epochs * full.steps_per_epoch
    smaller: list[dict] = []
    for subset in sets[:-1]:
        epochs = equal_compute_epochs(full_steps, subset.steps_per_epoch)
        for seed in int_list(args.size_seeds):
            for mode in modes:
                record = runner.obtain(Run(mode, seed, epochs, lrs[mode], subset, (DEV_BENCHMARK,)),
                                       f"data efficiency, {subset.images} images")
                if record:
                    smaller.append(record)

    if set(modes) != set(MODES):
        print(json.dumps({m: [r["summary"] for r in rs] for m, rs in compare.items()}, sort_keys=True))
        return {}
    missing = [m for m, rs in compare.items() if not rs]
    if missing:
        raise SystemExit(f"no complete comparison run of mode(s) {missing} in {work / 'runs'}")
    budget = {**comparison_budget(args, compare, lr_search, lrs, embed_seconds, started), "loss": runner.loss}
    write_data_efficiency([r for rs in compare.values() for r in rs] + smaller,
                          curve_budget(args, budget, sets, full_steps), results_dir)
    return finish(args, results_dir, compare, budget)


# ---------------------------------------------------------------------------------------------- budget


def budget_command(args) -> str:
    """The command line that reproduces the runs: the budget flags that differ from their defaults."""
    parser, flags = build_parser(), ["python", "benchmarks/flame_vs_clip.py"]
    for dest in BUDGET_FLAGS:
        value = getattr(args, dest)
        if value != parser.get_default(dest):
            flags += [f"--{dest.replace('_', '-')}", str(value)]
    return shlex.join(flags)


def comparison_budget(args, runs: dict[str, list[dict]], lr_search: dict, lrs: dict, embed_seconds, started) -> dict:
    first = runs["flame"][0]["train"]
    steps, images, epochs, batch = first["steps"], first["samples"], first["epochs"], first["batch_size"]
    trained = {(r["train"]["steps"], r["train"]["samples"], r["train"]["batch_size"])
               for rs in runs.values() for r in rs}
    if len(trained) != 1:
        raise SystemExit(f"the runs do not share one budget (steps, samples, batch): {sorted(trained)}")
    seeds = {mode: [r["seed"] for r in rs] for mode, rs in runs.items()}
    budget = {
        "train_images": images, "captions_per_image": 5, "epochs": epochs, "batch_size": batch,
        "steps": steps, "seeds": seeds, "base_profile": args.base_profile, "warmup_steps": args.warmup_steps,
        "lr": lrs, "clip_lr_search": lr_search,
        "device": first["device"], "precision": first["precision"],
        "embed_seconds_this_invocation": None if embed_seconds is None else round(embed_seconds, 1),
        "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
        "eval_limits": {b: args.limit for b in BENCHMARKS} if args.limit else EVAL_LIMITS,
        "command": budget_command(args),
    }
    budget["description"] = (
        f"{images} Flickr8k training images x 5 captions, {epochs} epochs = {steps} steps of batch "
        f"{batch} per run (warm-up {args.warmup_steps}), profile {args.base_profile!r} + {json.dumps(BENCH_OVERRIDES)} "
        f"(both modes), seeds {seeds}, {budget['precision']} on {budget['device']}. Learning rate: FLAME "
        f"{lrs['flame']:g} (the profile's); CLIP {lrs['clip']:g}, {describe_search(lr_search)}. "
        f"Command: `{budget['command']}`. Evaluation: all images of each benchmark except "
        f"{budget['eval_limits']} (first N images)."
    )
    return budget


def curve_budget(args, budget: dict, sets: list[Subset], full_steps: int) -> dict:
    sizes = []
    for s in sets:
        epochs = args.epochs if s.full else equal_compute_epochs(full_steps, s.steps_per_epoch)
        sizes.append({"train_images": s.images, "shards": s.shards.name, "steps_per_epoch": s.steps_per_epoch,
                      "epochs": epochs, "steps": epochs * s.steps_per_epoch})
    out = {
        "sizes": sizes, "full_size_steps": full_steps, "batch_size": args.batch_size, "shard_size": SHARD_SIZE,
        "seeds_full_size": budget["seeds"], "seeds_smaller_sizes": int_list(args.size_seeds), "lr": budget["lr"],
        "metric": HEADLINE, "command": budget["command"],
    }
    out["description"] = (
        f"Equal compute: every size trains for (at least) the full size's {full_steps} steps of batch "
        f"{args.batch_size}, epochs = ceil({full_steps} / steps per epoch at that size) ("
        + ", ".join(f"{s['train_images']} images: {s['epochs']} epochs = {s['steps']} steps" for s in sizes)
        + f"); a size of N images is the first N/{SHARD_SIZE} shards of the {budget['train_images']} training "
        f"images. The full size is the comparison's runs (seeds {budget['seeds']}); the smaller sizes have seeds "
        f"{out['seeds_smaller_sizes']} and are scored on {DEV_BENCHMARK} only. Same profile, learning rates "
        f"({budget['lr']}) and warm-up as the comparison."
    )
    return out


if __name__ == "__main__":
    main()
