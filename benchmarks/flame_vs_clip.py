"""FLAME (frozen LLM text side) against the CLIP baseline (text tower trained from scratch).

Both modes train the same image tower with the same loss, data, batch, epochs and
seeds through the same commands (``flame train --profile <mode>``), and are scored by
``flame evaluate`` on the Flickr8k dev split (retrieval, long-caption retrieval with
the 5 captions joined, multilingual retrieval) and zero-shot on imagenet-200x5.

Training data: every Flickr8k image of ../shared/data/flickr8k-866 outside the dev
split (train + the few in no split), all 5 English captions each. Shards and caption
embeddings are made once and reused by every seed. Every step is resumable: rerun
the same command to continue.

Writes benchmarks/results/flame_vs_clip.{json,md} ({mode: {metric: {mean, std,
values}}} plus the budget), two PNG plots (training curves, recall@k), and with
``--tracking-uri`` logs them all to one MLflow run. Prints the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flame.atomic import write_json, write_text  # noqa: E402
from flame.config import read_params  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
MODES = ("flame", "clip")
# What both modes share on top of --base-profile, sized for 2 busy CPU cores: the same image tower
# (ViT-Tiny width, 6 blocks, 64 px, 16x16 patches), one frozen-LLM prompt per caption (K = 5 positives
# per image, the raw PromptEOL prompt), a small CLIP text tower (2 blocks of width 128, 48 tokens: every
# Flickr8k caption fits) and one zero-shot template per class.
BENCH_OVERRIDES = {
    "image": {"img_size": 64, "patch_size": 16, "model_kwargs": {"depth": 6}},
    "text": {"captions_per_sample": 5, "views": [{"field": "caption", "facet_set": "raw"}]},
    "clip_text": {"width": 128, "heads": 4, "layers": 2, "context_length": 48},
    "eval": {"templates": "single"},
}
BENCHMARKS = ("flickr8k-dev-retrieval", "flickr8k-dev-long", "flickr8k-dev-multilingual", "imagenet-200x5-zeroshot")
# Images per benchmark (None: all), the same for both modes. The frozen LLM encodes every benchmark text once
# (then cached); on 2 busy cores the ~1,800 Chinese, Arabic and Multi30k captions of all 113 dev images are
# beyond this budget, so multilingual retrieval uses the first 20 dev images (100 zh, 60 ar captions).
EVAL_LIMITS = {"flickr8k-dev-multilingual": 20}
# Rows of the markdown table (all summary metrics are in the JSON).
TABLE = [
    ("flickr8k-dev-retrieval/mean_recall@1", "Flickr8k dev retrieval, mean R@1"),
    ("flickr8k-dev-retrieval/mean_recall@5", "Flickr8k dev retrieval, mean R@5"),
    ("flickr8k-dev-retrieval/mean_recall@10", "Flickr8k dev retrieval, mean R@10"),
    ("flickr8k-dev-retrieval/image_retrieval_recall@5", "  text -> image R@5"),
    ("flickr8k-dev-retrieval/text_retrieval_recall@5", "  image -> text R@5"),
    ("flickr8k-dev-long/mean_recall@1", "long captions (5 joined), mean R@1"),
    ("flickr8k-dev-long/mean_recall@5", "long captions (5 joined), mean R@5"),
    ("flickr8k-dev-multilingual/mean_recall@1", "multilingual, mean R@1 over languages"),
    ("flickr8k-dev-multilingual/zh_mean_recall@1", "  Chinese mean R@1"),
    ("flickr8k-dev-multilingual/ar_mean_recall@1", "  Arabic mean R@1"),
    ("flickr8k-dev-multilingual/de_mean_recall@1", "  German mean R@1"),
    ("imagenet-200x5-zeroshot/acc1", "ImageNet-200x5 zero-shot top-1"),
    ("imagenet-200x5-zeroshot/acc5", "ImageNet-200x5 zero-shot top-5"),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(ROOT / "outputs" / "flame_vs_clip"),
                   help="working folder for the manifest, shards, embeddings, checkpoints and evaluations")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"),
                   help="where flame_vs_clip.json/.md and the PNG plots are written")
    p.add_argument("--data", default=str(DATA / "flickr8k-866"), help="the flickr8k-866 folder (manifest.jsonl + images/)")
    p.add_argument("--seeds", default="0,1,2", help="comma list of training seeds (each mode trains once per seed)")
    p.add_argument("--modes", default="flame,clip",
                   help="modes to train and evaluate in this invocation (e.g. 'clip' while the embeddings are made "
                   "elsewhere); the results files are written once both modes have every seed")
    p.add_argument("--train-shards", type=int, default=None,
                   help="train on the first N shards (256 images each) only, for a smaller budget (default: all)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs of every run (the equal budget)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size of every run")
    p.add_argument("--warmup-steps", type=int, default=10, help="LR warm-up steps of every run")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers of every run")
    p.add_argument("--base-profile", default="tiny", help="profile of params.yaml both modes extend (image tower, loss, LR)")
    p.add_argument("--aggregate-only", action="store_true",
                   help="train and evaluate nothing: write the results from the runs of --work that are complete")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images of each benchmark (quick checks)")
    p.add_argument("--tracking-uri", default=None, help="also log the results and plots to this MLflow tracking URI")
    return p.parse_args(argv)


def flame_cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "flame", *args]
    print("+ flame " + " ".join(args), file=sys.stderr, flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env)
    if done.returncode:
        raise SystemExit(f"command failed ({done.returncode}): {' '.join(cmd)}")


def write_train_manifest(data: Path, out: Path) -> int:
    """Every non-dev image, its 5 English captions; image paths made absolute."""
    rows = []
    for line in (data / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("flickr8k_split") == "dev":
            continue
        rows.append({"url": str((data / row["image"]).resolve()), "caption": row["en"][0], "captions": row["en"]})
    write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)


def write_params(work: Path, args, seeds: list[int]) -> Path:
    """params.yaml with one profile per (mode, seed): the base profile + the equal training budget."""
    params = read_params(ROOT / "params.yaml")
    budget = {"epochs": args.epochs, "batch_size": args.batch_size, "warmup_steps": args.warmup_steps,
              "workers": args.workers}
    params["profiles"]["bench"] = {"extends": args.base_profile, **BENCH_OVERRIDES}
    for mode in MODES:
        for seed in seeds:
            params["profiles"][f"{mode}-s{seed}"] = {
                "extends": "bench", "text": {"mode": mode}, "train": {**budget, "seed": seed}}
    path = work / f"params-s{'-'.join(map(str, seeds))}.yaml"  # one per seed list: invocations may run side by side
    write_text(path, yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    return path


def train_shards(work: Path, count: int | None) -> Path:
    """The downloaded shard folder, or a folder linking its first ``count`` shards."""
    if count is None:
        return work / "shards"
    subset = work / f"shards-first{count}"
    subset.mkdir(exist_ok=True)
    for tar in sorted((work / "shards").glob("*.tar"))[:count]:
        for member in (tar, tar.with_suffix(".parquet"), tar.with_name(tar.stem + "_stats.json")):
            link = subset / member.name
            if not link.exists():
                link.symlink_to(member.resolve())
    return subset


def run_mode(mode: str, seed: int, work: Path, shards: Path, params: Path, store: Path, args) -> dict:
    run = work / "runs" / f"{mode}-s{seed}"
    common = ["--config", str(params), "--profile", f"{mode}-s{seed}"]
    summary_file = run / "train_summary.json"
    done = summary_file.exists() and json.loads(summary_file.read_text())["epochs"] >= args.epochs
    if not done:
        train = ["train", *common, "--shards", str(shards), "--out", str(run), "--resume"]
        if mode == "flame":
            train += ["--embeddings", str(store)]
        started = time.perf_counter()
        flame_cli(*train)
        write_json(run / "wall_time.json", {"train_seconds": time.perf_counter() - started})
    for bench in BENCHMARKS:
        result = run / f"eval-{bench}.json"
        if not result.exists():
            evaluate = ["evaluate", *common, "--checkpoint", str(run), "--out", str(result), "--benchmark", bench,
                        "--no-plots"]
            limit = args.limit or EVAL_LIMITS.get(bench)
            if limit:
                evaluate += ["--limit", str(limit)]
            flame_cli(*evaluate)
    return {"seed": seed, "summary": read_summary(run), "train": json.loads(summary_file.read_text()),
            "curve": read_curve(run / "metrics.jsonl")}


def read_summary(run: Path) -> dict:
    summary = {}
    for bench in BENCHMARKS:
        summary.update(json.loads((run / f"eval-{bench}.json").read_text())["summary"])
    return summary


def read_curve(path: Path) -> list[tuple[int, float]]:
    curve = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        metrics = rec.get("metrics", rec)
        if "train/loss" in metrics:
            curve.append((int(rec.get("step", 0)), float(metrics["train/loss"])))
    return curve


def aggregate(runs: dict[str, list[dict]]) -> dict:
    out = {}
    for mode, mode_runs in runs.items():
        keys = sorted(set.intersection(*(set(r["summary"]) for r in mode_runs)))
        out[mode] = {}
        for key in keys:
            values = [float(r["summary"][key]) for r in mode_runs]
            out[mode][key] = {"mean": statistics.fmean(values),
                              "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
        for key in ("images_per_sec", "last_loss"):
            values = [float(r["train"][key]) for r in mode_runs]
            out[mode][f"train/{key}"] = {"mean": statistics.fmean(values),
                                         "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
    return out


def markdown(results: dict, budget: dict) -> str:
    lines = [
        "# FLAME vs CLIP baseline (Flickr8k, equal budgets)", "",
        f"Budget: {budget['description']}", "",
        "| metric | FLAME (frozen LLM) | CLIP (text tower from scratch) | FLAME - CLIP | chance |",
        "|---|---|---|---|---|",
    ]
    for key, label in TABLE:
        if key not in results["flame"] or key not in results["clip"]:
            continue
        f, c = results["flame"][key], results["clip"][key]
        bench, metric = key.split("/", 1)
        chance = results["flame"].get(f"{bench}/chance_{metric}", {}).get("mean")
        lines.append(f"| {label} (`{key}`) | {f['mean']:.4f} ± {f['std']:.4f} | {c['mean']:.4f} ± {c['std']:.4f} | "
                     f"{f['mean'] - c['mean']:+.4f} | {'' if chance is None else f'{chance:.4f}'} |")
    for key, label in (("train/images_per_sec", "training images/s"), ("train/last_loss", "final training loss")):
        f, c = results["flame"][key], results["clip"][key]
        lines.append(f"| {label} | {f['mean']:.1f} ± {f['std']:.1f} | {c['mean']:.1f} ± {c['std']:.1f} | | |")
    lines += ["", "Mean ± sample standard deviation over the seeds; per-seed values are in flame_vs_clip.json.", ""]
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]], results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"flame": "tab:red", "clip": "tab:blue"}
    curves = out_dir / "flame_vs_clip_training.png"
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, mode_runs in runs.items():
        for i, run in enumerate(mode_runs):
            steps, losses = zip(*run["curve"]) if run["curve"] else ((), ())
            ax.plot(steps, losses, color=colors[mode], alpha=0.8, lw=1, label=mode if i == 0 else None)
    ax.set(xlabel="step", ylabel="training loss (multi-positive sigmoid)", title="Training curves, one line per seed")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(curves, dpi=120)
    plt.close(fig)

    recall = out_dir / "flame_vs_clip_recall.png"
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharey=False)
    for ax, bench in zip(axes, ("flickr8k-dev-retrieval", "flickr8k-dev-long", "flickr8k-dev-multilingual")):
        ks = [k for k in (1, 5, 10) if f"{bench}/mean_recall@{k}" in results["flame"]]
        for mode in MODES:
            means = [results[mode][f"{bench}/mean_recall@{k}"]["mean"] for k in ks]
            stds = [results[mode][f"{bench}/mean_recall@{k}"]["std"] for k in ks]
            ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, color=colors[mode], label=mode)
        chance = [results["flame"].get(f"{bench}/chance_mean_recall@{k}", {}).get("mean") for k in ks]
        if all(c is not None for c in chance):
            ax.plot(ks, chance, ls=":", color="gray", label="chance")
        ax.set(title=bench, xlabel="k", ylabel="mean recall@k", xticks=ks)
        ax.legend()
    fig.tight_layout()
    fig.savefig(recall, dpi=120)
    plt.close(fig)
    return [curves, recall]


def log_to_mlflow(uri: str, results: dict, budget: dict, files: list[Path]) -> str:
    import mlflow

    from flame.mlflow.store import check_tracking_uri, metric_name, using_tracking_uri

    check_tracking_uri(uri)
    with using_tracking_uri(uri):
        mlflow.set_experiment("flame-vs-clip")
        with mlflow.start_run(run_name="flame-vs-clip") as run:
            mlflow.log_params({k: v for k, v in budget.items() if k != "description"})
            for mode, metrics in results.items():
                mlflow.log_metrics({metric_name(f"{mode}/{k}/mean"): v["mean"] for k, v in metrics.items()})
            for path in files:
                mlflow.log_artifact(str(path))
            return run.info.run_id


def main(argv=None) -> dict:
    args = parse_args(argv)
    work, results_dir = Path(args.work), Path(args.results)
    work.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    started = time.perf_counter()

    if args.aggregate_only:
        return finish(args, work, results_dir, seeds, completed_runs(work, seeds), embed_seconds=None, started=started)
    write_train_manifest(Path(args.data), work / "train.jsonl")
    params = write_params(work, args, seeds)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    flame_cli("download", "--config", str(params), "--profile", "bench",
              "--manifest", str(work / "train.jsonl"), "--out", str(work / "shards"))
    shards = train_shards(work, args.train_shards)
    t0 = time.perf_counter()
    if "flame" in modes:
        flame_cli("embed", "--config", str(params), "--profile", "bench",
                  "--input", str(shards), "--out", str(work / "embeddings"))
    embed_seconds = time.perf_counter() - t0
    store = work / "embeddings"

    runs = {mode: [] for mode in MODES}
    for seed in seeds:  # paired by seed, so a stopped benchmark still has comparable runs
        for mode in modes:
            runs[mode].append(run_mode(mode, seed, work, shards, params, store, args))
    if set(modes) != set(MODES):
        print(json.dumps({m: [r["summary"] for r in rs] for m, rs in runs.items()}, sort_keys=True))
        return {}
    return finish(args, work, results_dir, seeds, runs, embed_seconds, started)


def completed_runs(work: Path, seeds: list[int]) -> dict[str, list[dict]]:
    """The runs of ``work`` that finished training and evaluation, per mode."""
    runs = {mode: [] for mode in MODES}
    for mode in MODES:
        for seed in seeds:
            run = work / "runs" / f"{mode}-s{seed}"
            if all((run / f"eval-{b}.json").exists() for b in BENCHMARKS) and (run / "train_summary.json").exists():
                runs[mode].append({"seed": seed, "summary": read_summary(run),
                                   "train": json.loads((run / "train_summary.json").read_text()),
                                   "curve": read_curve(run / "metrics.jsonl")})
    missing = [m for m, rs in runs.items() if not rs]
    if missing:
        raise SystemExit(f"no complete run of mode(s) {missing} in {work / 'runs'}")
    return runs


def finish(args, work: Path, results_dir: Path, seeds: list[int], runs: dict, embed_seconds, started) -> dict:
    seeds = {mode: [r.get("seed", s) for r, s in zip(rs, seeds)] for mode, rs in runs.items()}
    first = runs["flame"][0]["train"]
    steps, images, epochs, batch = first["steps"], first["samples"], first["epochs"], first["batch_size"]
    trained = {(r["train"]["steps"], r["train"]["samples"], r["train"]["batch_size"]) for rs in runs.values() for r in rs}
    if len(trained) != 1:
        raise SystemExit(f"the runs do not share one budget (steps, samples, batch): {sorted(trained)}")
    budget = {
        "train_images": images, "captions_per_image": 5, "epochs": epochs, "batch_size": batch,
        "steps": steps, "seeds": seeds, "base_profile": args.base_profile, "warmup_steps": args.warmup_steps,
        "device": runs["flame"][0]["train"]["device"], "precision": runs["flame"][0]["train"]["precision"],
        "embed_seconds_this_invocation": None if embed_seconds is None else round(embed_seconds, 1),
        "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
        "eval_limits": EVAL_LIMITS,
    }
    budget["description"] = (
        f"{images} Flickr8k training images x 5 captions, {epochs} epochs = {steps} steps of batch "
        f"{batch} per run (warm-up {args.warmup_steps}), profile {args.base_profile!r} + {json.dumps(BENCH_OVERRIDES)} (both modes), seeds {seeds}, "
        f"{budget['precision']} on {budget['device']}. Command: `python benchmarks/flame_vs_clip.py "
        f"--epochs {epochs} --batch-size {batch} --warmup-steps {args.warmup_steps} --seeds {args.seeds}"
        f"{'' if args.train_shards is None else f' --train-shards {args.train_shards}'}`. "
        f"Evaluation: all images of each benchmark except {EVAL_LIMITS} (first N images)."
    )
    results = aggregate(runs)
    payload = {**results, "budget": budget}
    write_json(results_dir / "flame_vs_clip.json", payload)
    write_text(results_dir / "flame_vs_clip.md", markdown(results, budget))
    files = [results_dir / "flame_vs_clip.json", results_dir / "flame_vs_clip.md", *plot(runs, results, results_dir)]
    if args.tracking_uri:
        payload["mlflow_run_id"] = log_to_mlflow(args.tracking_uri, results, budget, files)
    print(json.dumps(payload, sort_keys=True))
    return payload


if __name__ == "__main__":
    main()
