"""The results of ``benchmarks/flame_vs_clip.py``: the comparison's runs aggregated per mode (mean ± std over
the seeds), a verdict per metric, flame_vs_clip.{json,md}, the training-curve and recall plots, and the optional
MLflow run. The data-efficiency curve is ``benchmarks/data_efficiency.py``'s."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.data_efficiency import COLORS, mean_std
from benchmarks.flame_vs_clip_runs import MODES
from flame.atomic import write_json, write_text

# Rows of the markdown table (all summary metrics are in the JSON); every one is better when higher.
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


def aggregate(runs: dict[str, list[dict]]) -> dict:
    out = {}
    for mode, mode_runs in runs.items():
        keys = sorted(set.intersection(*(set(r["summary"]) for r in mode_runs)))
        out[mode] = {key: mean_std([r["summary"][key] for r in mode_runs]) for key in keys}
        for key in ("images_per_sec", "last_loss"):
            out[mode][f"train/{key}"] = mean_std([r["train"][key] for r in mode_runs])
    return out


def verdict(flame: dict, clip: dict) -> str:
    """'yes' / 'no' when FLAME's mean is above / below CLIP's by more than the two stds combined, else
    'within noise'."""
    diff, noise = flame["mean"] - clip["mean"], flame["std"] + clip["std"]
    return "yes" if diff > noise else "no" if -diff > noise else "within noise"


def markdown(results: dict, budget: dict) -> str:
    lines = [
        "# FLAME vs CLIP baseline (Flickr8k, equal budgets)", "",
        f"Budget: {budget['description']}", "",
        "| metric | FLAME (frozen LLM) | CLIP (text tower from scratch) | FLAME - CLIP | FLAME better? | chance |",
        "|---|---|---|---|---|---|",
    ]
    verdicts: dict[str, list[str]] = {"yes": [], "no": [], "within noise": []}
    single_seed = any(len(metric["values"]) == 1 for mode in MODES for metric in results[mode].values())
    for key, label in TABLE:
        if key not in results["flame"] or key not in results["clip"]:
            continue
        f, c = results["flame"][key], results["clip"][key]
        bench, metric = key.split("/", 1)
        chance = results["flame"].get(f"{bench}/chance_{metric}", {}).get("mean")
        better = verdict(f, c)
        verdicts[better].append(label.strip())
        lines.append(f"| {label} (`{key}`) | {f['mean']:.4f} ± {f['std']:.4f} | {c['mean']:.4f} ± {c['std']:.4f} | "
                     f"{f['mean'] - c['mean']:+.4f} | {better} | {'' if chance is None else f'{chance:.4f}'} |")
    for key, label in (("train/images_per_sec", "training images/s"), ("train/last_loss", "final training loss")):
        f, c = results["flame"][key], results["clip"][key]
        lines.append(f"| {label} | {f['mean']:.1f} ± {f['std']:.1f} | {c['mean']:.1f} ± {c['std']:.1f} | | | |")
    lines += [
        "", "Mean ± sample standard deviation over the seeds; per-seed values are in flame_vs_clip.json. "
        "\"FLAME better?\": yes / no when the difference of the means exceeds the two standard deviations added, "
        "else within noise" + (" (one seed has no spread: any difference decides)." if single_seed else "."), "",
        f"**Where FLAME wins.** Better: {'; '.join(verdicts['yes']) or 'nowhere'}. "
        f"Worse: {'; '.join(verdicts['no']) or 'nowhere'}. "
        f"Within noise: {'; '.join(verdicts['within noise']) or 'nothing'}.", "",
    ]
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]], results: dict, out_dir: Path, loss: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = out_dir / "flame_vs_clip_training.png"
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, mode_runs in runs.items():
        for i, run in enumerate(mode_runs):
            steps, losses = zip(*run["curve"]) if run["curve"] else ((), ())
            ax.plot(steps, losses, color=COLORS[mode], alpha=0.8, lw=1, label=mode if i == 0 else None)
    ax.set(xlabel="step", ylabel=f"training loss ({loss})", title="Training curves, one line per seed")
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
            ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, color=COLORS[mode], label=mode)
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
            mlflow.log_params({k: v for k, v in budget.items() if k not in ("description", "clip_lr_search")})
            mlflow.log_dict(budget["clip_lr_search"], "clip_lr_search.json")
            for mode, metrics in results.items():
                mlflow.log_metrics({metric_name(f"{mode}/{k}/mean"): v["mean"] for k, v in metrics.items()})
            for path in files:
                mlflow.log_artifact(str(path))
            return run.info.run_id


def finish(args, results_dir: Path, runs: dict[str, list[dict]], budget: dict) -> dict:
    results = aggregate(runs)
    payload = {**results, "budget": budget}
    write_json(results_dir / "flame_vs_clip.json", payload)
    write_text(results_dir / "flame_vs_clip.md", markdown(results, budget))
    files = [results_dir / "flame_vs_clip.json", results_dir / "flame_vs_clip.md", *plot(runs, results, results_dir, budget["loss"]),
             results_dir / "data_efficiency.json", results_dir / "data_efficiency.png"]
    if args.tracking_uri:
        payload["mlflow_run_id"] = log_to_mlflow(args.tracking_uri, results, budget, files)
    print(json.dumps(payload, sort_keys=True))
    return payload
