"""The sweep that chose the `tiny` profile's settings for `make demo`: image tower, text positives, loss and
logit-scale init, epochs, crops, m (train.positives_per_image) and seed, on the bundled sample set.

Every run trains on the 762 images of data/sample/train.jsonl, downloaded once into WORK/shards by ``flame
download`` (which resolves the manifest's relative image paths), and is scored by ``flame evaluate`` on
sample-dev-retrieval: the 113 images of data/sample/dev.jsonl, never trained on. A run is params.yaml's
`tiny` profile with the overrides of RUNS deep-merged over it, written as a profile ``extends: tiny`` into
WORK/params/NAME.yaml. The frozen LLM embeds the training captions once per distinct resolved ``text``
section (``flame embed`` into WORK/embeddings-HASH; it resumes shard by shard).

The sweep ran on the old `tiny` (a 12-block ViT-Tiny on 64 tokens of 8 px patches, 1 caption x the raw and
short facet sets = K 4, sigmoid loss, 6 epochs, crops (0.9, 1)) and `tiny` took its result, so RUNS restates
every departure from the current `tiny`: the chosen-m2-sN runs are `tiny` itself at seed N.

Resumable: a run whose train_summary.json has its epochs is not retrained, an evaluation whose file exists
(WORK/runs/NAME/eval.json; eval-P.json per --protocols P) is not redone. Writes --out ({command, runs}: per run
its overrides, table columns, mean R@1/R@5, their chance values and ratios, per-epoch losses, train seconds),
prints the markdown table and, last, that JSON on one line. Cost measured on 2 idle CPU cores: each
embedding store about 50 s, run 1's 12-block tower about 9 s an epoch (90 images/s), the 6-block runs about
2 s an epoch (~390 images/s), an evaluation 5-70 s (the first one embeds the dev captions); the whole sweep
about 40 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.flame_vs_clip import flame_cli  # noqa: E402
from flame.atomic import write_json, write_text  # noqa: E402
from flame.config import load_config, read_params  # noqa: E402
from flame.digest import config_digest  # noqa: E402

BENCH = "sample-dev-retrieval"
TRAIN_MANIFEST = ROOT / "data" / "sample" / "train.jsonl"

# What runs restate of the old tiny (see the docstring); anything not given is the current tiny's.
OLD_TOWER = {"patch_size": 8, "model_kwargs": {"depth": 12}}
RAW_SHORT = {"captions_per_sample": 1, "views": [{"field": "caption", "facet_set": "raw"},
                                                 {"field": "caption", "facet_set": "short"}]}
SCALE100 = {"logit_scale_init": 100, "max_logit_scale": 1000}


def run(seed: int, *, image: dict | None = None, text: dict | None = None, **train) -> dict:
    """Overrides of the current tiny: the seed, ``train`` keys, and the image / text sections given."""
    over = {"image": image, "text": text, "train": {**train, "seed": seed}}
    return {k: v for k, v in over.items() if v}


# Name -> overrides of tiny, in the order of the sweep's table (its # column). Runs 1 and 2 were measured
# on the code before this change's loss normalisation (the sigmoid loss divided by B, now by B*m).
RUNS = {
    "old-tower": run(0, image=OLD_TOWER, text=RAW_SHORT, loss="sigmoid", epochs=6, crop_scale=[0.9, 1.0]),
    "small-tower-sigmoid": run(0, text=RAW_SHORT, loss="sigmoid"),
    "nce-e20": run(0, text=RAW_SHORT, epochs=20),
    "sigmoid-scale100-e20": run(0, text=RAW_SHORT, epochs=20, loss="sigmoid", **SCALE100),
    "nce-scale100-e20": run(0, text=RAW_SHORT, epochs=20, **SCALE100),
    "nce-5captions-m2-e20": run(0, epochs=20),
    "nce-5captions-m5-e20": run(0, epochs=20, positives_per_image=5),
    "nce-e40": run(0, text=RAW_SHORT, epochs=40),
    "nce-e20-seed1": run(1, text=RAW_SHORT, epochs=20),
    "sigmoid-scale100-e40": run(0, text=RAW_SHORT, epochs=40, loss="sigmoid", **SCALE100),
    # The current tiny (m 2) and its m 5 variant, 3 seeds each.
    **{f"chosen-m{m}-s{s}": run(s, **({} if m == 2 else {"positives_per_image": m}))
       for s in (0, 1, 2) for m in (2, 5)},
}
COLUMNS = ["#", "blocks / tokens", "texts (K)", "loss, logit-scale init", "epochs", "crop", "m", "seed",
           "mean R@1", "mean R@5", "R@1 / chance", "R@5 / chance"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma list of runs (default: all): {', '.join(RUNS)}")
    p.add_argument("--work", default=str(ROOT / "outputs" / "demo_sweep"),
                   help="working folder for the shards, embeddings, params files, checkpoints and evaluations")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "demo_sweep.json"), help="results JSON")
    p.add_argument("--protocols", default="",
                   help="comma list of facet sets (e.g. raw,short) each run is also evaluated with, as "
                   "eval.text_protocols {retrieval: P} (the default protocol is the long facet set)")
    p.add_argument("--dry-run", action="store_true", help="print the profiles and commands; run and write nothing")
    return p


def describe(cfg) -> dict:
    """The table's columns of a resolved configuration (a tower without model_kwargs.depth has ViT-Tiny's 12)."""
    im, text, train = cfg.image, cfg.text, cfg.train
    k = text.captions_per_sample * sum(len(text.facet_sets[v.facet_set].facets) for v in text.views)
    n = text.captions_per_sample
    scale = "1/0.07" if math.isclose(train.logit_scale_init, 1 / 0.07) else f"{train.logit_scale_init:g}"
    return {"blocks / tokens": f"{im.model_kwargs.get('depth', 12)} / {(im.img_size // im.patch_size) ** 2}",
            "texts (K)": f"{n} caption{'s' * (n > 1)} x {'+'.join(v.facet_set for v in text.views)} ({k})",
            "loss, logit-scale init": f"{train.loss}, scale {scale}",
            "epochs": train.epochs, "crop": "{:g}-{:g}".format(*train.crop_scale),
            "m": train.positives_per_image, "seed": train.seed}


def text_key(cfg) -> str:
    return config_digest(cfg.text.model_dump(mode="json"), 8)


def recalls(path: Path) -> dict:
    s = json.loads(path.read_text())["summary"]
    out = {}
    for k in (1, 5):
        r, chance = s[f"{BENCH}/mean_recall@{k}"], s[f"{BENCH}/chance_mean_recall@{k}"]
        out |= {f"mean_recall@{k}": r, f"chance_mean_recall@{k}": chance, f"recall@{k}_over_chance": r / chance}
    return out


class Sweep:
    """Downloads, embeds, trains and evaluates what is missing under ``work``; with ``dry`` only prints it."""

    def __init__(self, work: Path, protocols: list[str], dry: bool):
        self.work, self.protocols, self.dry = work, protocols, dry
        self.shards, self.embedded = work / "shards", set()

    def flame(self, *args: str) -> None:
        if self.dry:
            print("+ flame " + shlex.join(args))
        else:
            flame_cli(*args)

    def write_params(self, name: str, over: dict) -> Path:
        """params.yaml plus the run's profile NAME and one NAME-P per protocol, in WORK/params/NAME.yaml."""
        profiles = {name: {"extends": "tiny", **over}}
        for p in self.protocols:
            profiles[f"{name}-{p}"] = {"extends": name, "eval": {"text_protocols": {"retrieval": p}}}
        path = self.work / "params" / f"{name}.yaml"
        if self.dry:
            print(f"# {path}: profiles {json.dumps(profiles)}")
        else:
            params = read_params(ROOT / "params.yaml")
            params["profiles"].update(profiles)
            write_text(path, yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
        return path

    def download(self) -> None:
        if not (self.shards / "download_summary.json").exists():
            self.flame("download", "--profile", "tiny", "--manifest", str(TRAIN_MANIFEST), "--out", str(self.shards))

    def obtain(self, name: str) -> dict | None:
        """The run's record, after training and evaluating what is missing (None in a dry run)."""
        cfg = load_config(ROOT / "params.yaml", "tiny", overrides=RUNS[name])
        params = self.write_params(name, RUNS[name])
        flags = ["--config", str(params), "--profile", name]
        folder = self.work / "runs" / name
        summary = folder / "train_summary.json"
        if not (summary.exists() and json.loads(summary.read_text())["epochs"] >= cfg.train.epochs):
            store = self.work / f"embeddings-{text_key(cfg)}"
            if store not in self.embedded:
                self.flame("embed", *flags, "--input", str(self.shards), "--out", str(store), "--no-progress")
                self.embedded.add(store)
            started = time.perf_counter()
            self.flame("train", *flags, "--shards", str(self.shards), "--embeddings", str(store),
                       "--out", str(folder), "--resume")
            if not self.dry:
                write_json(folder / "wall_time.json", {"train_seconds": time.perf_counter() - started})
        evals = {name: folder / "eval.json", **{f"{name}-{p}": folder / f"eval-{p}.json" for p in self.protocols}}
        for profile, path in evals.items():
            if not path.exists():
                self.flame("evaluate", "--config", str(params), "--profile", profile, "--checkpoint", str(folder),
                           "--benchmark", BENCH, "--out", str(path), "--no-plots")
        if self.dry:
            return None
        train = json.loads(summary.read_text())
        wall = folder / "wall_time.json"
        return {"name": name, "overrides": RUNS[name], "columns": describe(cfg), **recalls(folder / "eval.json"),
                "protocols": {p: recalls(folder / f"eval-{p}.json") for p in self.protocols},
                "losses": train["losses"], "images_per_sec": train["images_per_sec"],
                "train_seconds": json.loads(wall.read_text())["train_seconds"] if wall.exists() else None}


def markdown(records: list[dict], protocols: list[str]) -> str:
    extra = [f"R@1 / R@5 over chance, retrieval {p}" for p in protocols]
    lines = ["| " + " | ".join(COLUMNS + extra) + " |", "|" + "---|" * (len(COLUMNS) + len(extra))]
    for r in records:
        c = r["columns"]
        cells = [list(RUNS).index(r["name"]) + 1, *(c[k] for k in COLUMNS[1:8]), f"{r['mean_recall@1']:.4f}",
                 f"{r['mean_recall@5']:.4f}", f"{r['recall@1_over_chance']:.1f}x", f"{r['recall@5_over_chance']:.2f}x"]
        cells += [f"{r['protocols'][p]['recall@1_over_chance']:.1f}x / {r['protocols'][p]['recall@5_over_chance']:.2f}x"
                  for p in protocols]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    names = [n for n in args.runs.split(",") if n]
    if unknown := [n for n in names if n not in RUNS]:
        raise SystemExit(f"unknown run(s) {unknown}; known: {', '.join(RUNS)}")
    protocols = [p for p in args.protocols.split(",") if p]
    if unknown := [p for p in protocols if p not in load_config(ROOT / "params.yaml", "tiny").text.facet_sets]:
        raise SystemExit(f"unknown facet set(s) {unknown} in --protocols")
    sweep = Sweep(Path(args.work), protocols, args.dry_run)
    sweep.download()
    records = [sweep.obtain(name) for name in names]
    if args.dry_run:
        return None
    payload = {"command": shlex.join(["python", "benchmarks/demo_sweep.py", *argv]), "runs": records}
    write_json(args.out, payload)
    print(markdown(records, sweep.protocols))
    print(json.dumps(payload))
    return payload


if __name__ == "__main__":
    main()
