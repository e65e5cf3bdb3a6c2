"""PNG plots beside a result file: recall/accuracy bars against chance, and a grid of
example retrievals (query text, its top-5 images, the right one framed green)."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evaluations.tasks.base import RetrievalExamples  # noqa: E402
from flame.atomic import atomic_path  # noqa: E402
from flame.data.images import read_image  # noqa: E402


def metric_bars(metrics: dict[str, float], path: str | Path, title: str) -> Path | None:
    keys = [k for k in metrics if _chance_of(k, metrics) is not None]
    if not keys:
        return None
    values = [metrics[k] for k in keys]
    chances = [_chance_of(k, metrics) for k in keys]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(keys) + 2), 4))
    xs = range(len(keys))
    ax.bar(xs, values, color="tab:blue", label="model")
    ax.scatter(xs, chances, color="tab:red", marker="_", s=400, linewidths=2, label="chance", zorder=3)
    ax.set_xticks(list(xs), keys, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, max(1e-3, max(values + chances)) * 1.15)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _chance_of(key: str, metrics: dict[str, float]) -> float | None:
    """Every headline metric ``X`` comes with ``chance_X``."""
    if key.startswith("chance_"):
        return None
    return metrics.get(f"chance_{key}")


def retrieval_grid(examples: RetrievalExamples, path: str | Path, title: str, max_pixels: int | None = None) -> Path:
    rows, cols = len(examples.queries), max(len(r) for r in examples.ranked_images)
    fig, axes = plt.subplots(rows, cols + 1, figsize=(2 * (cols + 1), 2 * rows), squeeze=False)
    for r, (query, ranked, correct) in enumerate(zip(examples.queries, examples.ranked_images, examples.correct)):
        axes[r][0].axis("off")
        axes[r][0].text(0, 0.5, "\n".join(textwrap.wrap(query, 28)[:7]), fontsize=7, va="center")
        for c in range(cols):
            ax = axes[r][c + 1]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(ranked):
                ax.axis("off")
                continue
            try:
                ax.imshow(read_image(ranked[c], max_pixels))
            except OSError:
                ax.text(0.5, 0.5, "unreadable", ha="center", fontsize=7)
            hit = ranked[c] == correct
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green" if hit else "lightgrey")
                spine.set_linewidth(4 if hit else 1)
            if r == 0:
                ax.set_title(f"#{c + 1}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing glyphs for some scripts are not an error
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
