"""The runs of ``benchmarks/flame_vs_clip.py``: the training sets (the first N shards of the training images),
one run per mode, seed, training set, epochs and learning rate, trained by ``flame train`` and scored by ``flame
evaluate`` under the work folder (what is done is skipped), the data they share (manifest, shards, the frozen
LLM's caption embeddings) and the CLIP baseline's learning-rate search. ``flame_cli`` runs one ``flame`` command
the way the benchmarks here do."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.data_efficiency import BENCHMARK, METRIC
from flame.atomic import write_json, write_text
from flame.config import load_config, read_params
from flame.data.shards import list_shards

ROOT = Path(__file__).resolve().parents[1]

MODES = ("flame", "clip")
# Images per shard: a training-set size of N images is the first N / SHARD_SIZE shards.
SHARD_SIZE = 128
# What both modes share on top of --base-profile, sized for 2 busy CPU cores: the same image tower
# (ViT-Tiny width, 6 blocks, 64 px, 16x16 patches), one frozen-LLM prompt per caption (K = 5 positives
# per image, the raw PromptEOL prompt), a small CLIP text tower (2 blocks of width 128, 48 tokens: every
# Flickr8k caption fits), one zero-shot template per class, and shards of SHARD_SIZE images.
BENCH_OVERRIDES = {
    "image": {"img_size": 64, "patch_size": 16, "model_kwargs": {"depth": 6}},
    "text": {"captions_per_sample": 5, "views": [{"field": "caption", "facet_set": "raw"}]},
    "clip_text": {"width": 128, "heads": 4, "layers": 2, "context_length": 48},
    "eval": {"templates": "single"},
    "data": {"number_sample_per_shard": SHARD_SIZE},
}
# The learning-rate search and the smaller sizes are scored on this benchmark only, by HEADLINE: the
# metric of the data-efficiency curve.
DEV_BENCHMARK, HEADLINE = BENCHMARK, METRIC
LR_SEARCH_SEED = 0
# Images per benchmark (None: all), the same for both modes. The frozen LLM encodes every benchmark text once
# (then cached); on 2 busy cores the ~1,800 Chinese, Arabic and Multi30k captions of all 113 dev images are
# beyond this budget, so multilingual retrieval uses the first 20 dev images (100 zh, 60 ar captions).
EVAL_LIMITS = {"flickr8k-dev-multilingual": 20}


def parse_sizes(text: str) -> list[int | None]:
    """Image counts of the data-efficiency curve; None is every image."""
    return [None if s.strip() == "all" else int(s) for s in text.split(",") if s.strip()]


def stage(message: str) -> None:
    print(f"[flame_vs_clip] {message}", file=sys.stderr, flush=True)


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


# ---------------------------------------------------------------------------------------------- data subsets


@dataclass(frozen=True)
class Subset:
    """A training set: a shard folder, its images and the steps of one epoch over it."""

    shards: Path
    images: int
    steps_per_epoch: int
    full: bool


def link_first_shards(shards: Path, count: int) -> Path:
    """``shards`` itself when ``count`` covers all of it, else a folder linking its first ``count`` shards."""
    tars = list_shards(shards)
    if count >= len(tars):
        return shards
    subset = shards.with_name(f"{shards.name}-first{count}")
    subset.mkdir(exist_ok=True)
    for tar in tars[:count]:
        for member in (tar, tar.with_suffix(".parquet"), tar.with_name(tar.stem + "_stats.json")):
            link = subset / member.name
            if not link.exists():
                link.symlink_to(member.resolve())
    return subset


def subset_of(shards: Path, count: int, batch_size: int, workers: int) -> Subset:
    """The first ``count`` shards, with the steps per epoch training will make of them (flame.train.batches)."""
    from flame.data.plan import plan_shards
    from flame.train.batches import steps_per_epoch

    folder = link_first_shards(shards, count)
    plan = plan_shards(folder, lambda name: (lambda sample: True))
    steps = steps_per_epoch(plan, world_size=1, num_workers=max(1, workers), batch_size=batch_size)
    if steps == 0:
        raise SystemExit(f"{plan.total} images in {folder} make no full batch of {batch_size}: choose a larger size")
    return Subset(folder, plan.total, steps, full=folder == shards)


def subsets(shards: Path, sizes: list[int | None], batch_size: int, workers: int) -> list[Subset]:
    """One subset per distinct size, smallest first; the last one is every shard."""
    total = len(list_shards(shards))
    counts = sorted({total if s is None else min(total, math.ceil(s / SHARD_SIZE)) for s in sizes} | {total})
    return [subset_of(shards, count, batch_size, workers) for count in counts]


def equal_compute_epochs(full_steps: int, steps_per_epoch: int) -> int:
    """Epochs that make at least ``full_steps`` steps: a smaller training set gets the full size's compute."""
    return math.ceil(full_steps / steps_per_epoch)


# ---------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    mode: str
    seed: int
    epochs: int
    lr: float
    subset: Subset
    benchmarks: tuple[str, ...]

    @property
    def name(self) -> str:
        """Runs that train the same thing share a folder: the full-size points of the curve are the comparison's
        runs, and a search run is reused when --lr-search-epochs equals --epochs."""
        return f"{self.mode}-n{self.subset.images}-e{self.epochs}-lr{self.lr:g}-s{self.seed}"


class Runner:
    """Trains and evaluates runs under ``work``, skipping what is already done; with ``execute`` False it
    only reads the runs that are complete."""

    def __init__(self, args, work: Path, execute: bool):
        self.args = args
        self.work = work
        self.execute = execute
        self.store = work / f"embeddings-{SHARD_SIZE}"
        self.bench_params = self.write_params("bench")
        bench = load_config(self.bench_params, profile="bench")
        self.base_lr, self.loss = bench.train.lr, bench.train.loss

    def write_params(self, name: str, profiles: dict | None = None) -> Path:
        """params.yaml plus the profile ``bench`` both modes share (--base-profile + BENCH_OVERRIDES) and
        ``profiles``, written to one file per name (invocations may run side by side)."""
        params = read_params(ROOT / "params.yaml")
        params["profiles"]["bench"] = {"extends": self.args.base_profile, **BENCH_OVERRIDES}
        params["profiles"].update(profiles or {})
        path = self.work / "params" / f"{name}.yaml"
        write_text(path, yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
        return path

    def run_params(self, run: Run) -> Path:
        a = self.args
        train = {"epochs": run.epochs, "batch_size": a.batch_size, "warmup_steps": a.warmup_steps,
                 "workers": a.workers, "seed": run.seed, "lr": run.lr}
        return self.write_params(run.name, {run.name: {"extends": "bench", "text": {"mode": run.mode}, "train": train}})

    def run_dir(self, run: Run) -> Path:
        return self.work / "runs" / run.name

    def eval_file(self, run: Run, bench: str) -> Path:
        suffix = f"-limit{self.args.limit}" if self.args.limit else ""
        return self.run_dir(run) / f"eval-{bench}{suffix}.json"

    def trained(self, run: Run) -> bool:
        summary = self.run_dir(run) / "train_summary.json"
        return summary.exists() and json.loads(summary.read_text())["epochs"] >= run.epochs

    def obtain(self, run: Run, what: str) -> dict | None:
        """The run's record, training and evaluating what is missing first; None if it is incomplete and this
        runner does not execute."""
        todo = [b for b in run.benchmarks if not self.eval_file(run, b).exists()]
        trained = self.trained(run)
        if trained and not todo:
            stage(f"{what}: {run.name} complete, skipped")
            return self.record(run)
        if not self.execute:
            stage(f"{what}: {run.name} incomplete, left out")
            return None
        train = "" if trained else f"train {run.epochs} epochs, then "
        stage(f"{what}: {run.name}: {train}evaluate {', '.join(todo)}")
        params = self.run_params(run)
        if not trained:
            self.train(run, params)
        for bench in todo:
            self.evaluate(run, params, bench)
        return self.record(run)

    def train(self, run: Run, params: Path) -> None:
        out = self.run_dir(run)
        cmd = ["train", "--config", str(params), "--profile", run.name, "--shards", str(run.subset.shards),
               "--out", str(out), "--resume", "--no-tracking"]
        if run.mode == "flame":
            cmd += ["--embeddings", str(self.store)]
        started = time.perf_counter()
        flame_cli(*cmd)
        write_json(out / "wall_time.json", {"train_seconds": time.perf_counter() - started})

    def evaluate(self, run: Run, params: Path, bench: str) -> None:
        cmd = ["evaluate", "--config", str(params), "--profile", run.name, "--checkpoint", str(self.run_dir(run)),
               "--out", str(self.eval_file(run, bench)), "--benchmark", bench, "--no-plots"]
        limit = self.args.limit or EVAL_LIMITS.get(bench)
        if limit:
            cmd += ["--limit", str(limit)]
        flame_cli(*cmd)

    def record(self, run: Run) -> dict:
        folder = self.run_dir(run)
        summary = {}
        for bench in run.benchmarks:
            summary.update(json.loads(self.eval_file(run, bench).read_text())["summary"])
        return {"name": run.name, "mode": run.mode, "seed": run.seed, "lr": run.lr, "summary": summary,
                "train": json.loads((folder / "train_summary.json").read_text()),
                "curve": read_curve(folder / "metrics.jsonl")}


def read_curve(path: Path) -> list[tuple[int, float]]:
    curve = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        metrics = rec.get("metrics", rec)
        if "train/loss" in metrics:
            curve.append((int(rec.get("step", 0)), float(metrics["train/loss"])))
    return curve


# ---------------------------------------------------------------------------------------------- stages


def prepare_data(runner: Runner, args, modes: list[str]) -> tuple[list[Subset], float | None]:
    """Manifest, shards and (for FLAME) caption embeddings, made once; the training subsets of every size.
    Returns the subsets (the full one last) and the seconds the embedding took in this invocation."""
    work, shards = runner.work, runner.work / f"shards-{SHARD_SIZE}"
    embed_seconds = None
    if runner.execute:
        images = write_train_manifest(Path(args.data), work / "train.jsonl")
        stage(f"download: {images} training images into shards of {SHARD_SIZE} ({shards})")
        flame_cli("download", "--config", str(runner.bench_params), "--profile", "bench",
                  "--manifest", str(work / "train.jsonl"), "--out", str(shards))
    sets = subsets(shards, parse_sizes(args.sizes), args.batch_size, args.workers)
    stage("training sets: " + ", ".join(f"{s.images} images ({s.steps_per_epoch} steps/epoch)" for s in sets))
    if runner.execute and "flame" in modes:
        stage(f"embed: every caption of {shards} with the frozen LLM (store {runner.store}; done shards are skipped)")
        started = time.perf_counter()
        flame_cli("embed", "--config", str(runner.bench_params), "--profile", "bench",
                  "--input", str(shards), "--out", str(runner.store))
        embed_seconds = time.perf_counter() - started
    return sets, embed_seconds


def clip_lr_candidates(args, base_lr: float) -> list[float]:
    if args.clip_lrs:
        return [float(s) for s in args.clip_lrs.split(",") if s.strip()]
    return [base_lr / 2, base_lr, base_lr * 2]


def search_clip_lr(runner: Runner, full: Subset, args) -> dict:
    """One short CLIP run per candidate learning rate, scored on dev by HEADLINE; the best is chosen."""
    candidates = clip_lr_candidates(args, runner.base_lr)
    search = {"candidates": candidates, "epochs": args.lr_search_epochs, "seed": LR_SEARCH_SEED,
              "train_images": full.images, "metric": HEADLINE, "scores": []}
    if len(candidates) == 1:
        return {**search, "chosen": candidates[0]}
    for i, lr in enumerate(candidates):
        run = Run("clip", LR_SEARCH_SEED, args.lr_search_epochs, lr, full, (DEV_BENCHMARK,))
        record = runner.obtain(run, f"CLIP lr search {i + 1}/{len(candidates)}")
        search["scores"].append({"lr": lr, "run": run.name,
                                 HEADLINE: None if record is None else record["summary"][HEADLINE]})
    scored = [s for s in search["scores"] if s[HEADLINE] is not None]
    if not scored:
        raise SystemExit(f"no CLIP learning-rate search run is complete in {runner.work / 'runs'}")
    chosen = max(scored, key=lambda s: s[HEADLINE])["lr"]  # the first candidate on a tie
    search["chosen"] = chosen
    stage(f"CLIP lr search: {chosen:g} chosen; {describe_search(search)}")
    return search


def describe_search(search: dict) -> str:
    if not search["scores"]:
        return "given (no search)"
    scores = ", ".join(f"{s['lr']:g}: {'incomplete' if s[HEADLINE] is None else format(s[HEADLINE], '.4f')}"
                       for s in search["scores"])
    return (f"the best of {len(search['candidates'])} by {search['metric']} after {search['epochs']} epochs "
            f"(seed {search['seed']}, every training image): {scores}")
