"""The data-efficiency curve of ``benchmarks/flame_vs_clip.py``: Flickr8k dev retrieval against the
number of training images, FLAME and the CLIP baseline at equal training steps.

This module only aggregates and plots: it takes one record per finished training run (as
flame_vs_clip.py collects them: mode, seed, the training summary, the evaluation summary metrics)
and writes ``data_efficiency.json`` and ``data_efficiency.png``. flame_vs_clip.py calls it after its
runs, and ``python benchmarks/flame_vs_clip.py --aggregate-only`` rewrites both from the completed
runs of its work folder.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from flame.atomic import write_json

BENCHMARK = "flickr8k-dev-retrieval"
METRIC = f"{BENCHMARK}/mean_recall@5"
CHANCE = f"{BENCHMARK}/chance_mean_recall@5"
COLORS = {"flame": "tab:red", "clip": "tab:blue"}
LABELS = {"flame": "FLAME (frozen LLM)", "clip": "CLIP (text tower from scratch)"}


def mean_std(values: list[float]) -> dict:
    """``{mean, std, values}``; std is the sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def entry(record: dict) -> dict:
    """One (mode, size, seed) point: what was trained and every flickr8k-dev-retrieval summary metric."""
    train = record["train"]
    return {
        "mode": record["mode"], "train_images": int(train["samples"]), "seed": record["seed"],
        "steps": train["steps"], "epochs": train["epochs"], "lr": record["lr"], "run": record["name"],
        "metrics": {k: v for k, v in sorted(record["summary"].items()) if k.startswith(BENCHMARK + "/")},
    }


def curve(entries: list[dict]) -> dict[str, list[dict]]:
    """Per mode, one point per training-set size: the headline metric over its seeds."""
    out: dict[str, list[dict]] = {}
    for mode in sorted({e["mode"] for e in entries}):
        sizes = sorted({e["train_images"] for e in entries if e["mode"] == mode})
        out[mode] = []
        for size in sizes:
            points = [e for e in entries if e["mode"] == mode and e["train_images"] == size]
            out[mode].append({"train_images": size, "seeds": [e["seed"] for e in points],
                              "steps": sorted({e["steps"] for e in points}),
                              **mean_std([e["metrics"][METRIC] for e in points])})
    return out


def write_data_efficiency(records: list[dict], budget: dict, out_dir: Path) -> dict:
    """Write ``data_efficiency.json`` (budget, the curve, one entry per run) and ``data_efficiency.png``."""
    entries = sorted((entry(r) for r in records), key=lambda e: (e["mode"], e["train_images"], e["seed"]))
    payload = {"budget": budget, "metric": METRIC, "curve": curve(entries), "runs": entries}
    write_json(out_dir / "data_efficiency.json", payload)
    plot(payload, out_dir / "data_efficiency.png")
    return payload


def plot(payload: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, points in payload["curve"].items():
        x = [p["train_images"] for p in points]
        y = [p["mean"] for p in points]
        yerr = [p["std"] for p in points]
        ax.errorbar(x, y, yerr=yerr if any(yerr) else None, marker="o", capsize=4, color=COLORS.get(mode),
                    label=LABELS.get(mode, mode))
        seeds = [(p["train_images"], v) for p in points if len(p["values"]) > 1 for v in p["values"]]
        if seeds:
            ax.scatter(*zip(*seeds), s=12, alpha=0.4, color=COLORS.get(mode))
    chance = [e["metrics"][CHANCE] for e in payload["runs"] if CHANCE in e["metrics"]]
    if chance:
        ax.axhline(statistics.fmean(chance), ls=":", color="gray", label="chance")
    sizes = sorted({e["train_images"] for e in payload["runs"]})
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set(xlabel="training images (5 captions each), log scale", ylabel=f"dev mean R@5 ({BENCHMARK})",
           title="Data efficiency at an equal number of training steps")
    ax.legend(title="mean ± std over seeds (dots: seeds)", fontsize="small", title_fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
