"""benchmarks/flame_vs_clip.py (with its flame_vs_clip_runs.py and flame_vs_clip_report.py) and
benchmarks/data_efficiency.py: the parts that decide what is trained (subsets, equal compute, the CLIP
learning-rate choice) and what is written, without training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import flame_vs_clip as fvc
from benchmarks import flame_vs_clip_report as report
from benchmarks import flame_vs_clip_runs as runs
from benchmarks.data_efficiency import write_data_efficiency

DEV = "flickr8k-dev-retrieval"


def test_subsets_link_the_first_shards_and_count_steps_as_training_does(sample_shards, tmp_path):
    shards = tmp_path / "shards-32"
    shutil.copytree(sample_shards, shards)  # 2 shards of 32 images
    small, full = runs.subsets(shards, [32, 40, None], batch_size=16, workers=1)  # 40 images round up to both shards
    assert (small.images, small.steps_per_epoch, small.full) == (32, 2, False)
    assert (full.images, full.steps_per_epoch, full.full, full.shards) == (64, 4, True, shards)
    assert sorted(p.name for p in small.shards.glob("*.tar")) == ["00000.tar"]
    assert (small.shards / "00000.tar").resolve() == (shards / "00000.tar").resolve()
    assert runs.subsets(shards, [32], batch_size=16, workers=1)[0] == small  # linking again is a no-op


def test_smaller_sizes_train_at_least_the_full_size_steps():
    assert runs.equal_compute_epochs(110, 11) == 10
    assert runs.equal_compute_epochs(110, 2) == 55
    assert runs.equal_compute_epochs(110, 6) == 19  # 114 steps: the last epoch is completed


@pytest.mark.parametrize("flame, clip, expected", [
    ((0.10, 0.01), (0.05, 0.01), "yes"),
    ((0.05, 0.01), (0.10, 0.01), "no"),
    ((0.07, 0.02), (0.05, 0.01), "within noise"),
])
def test_verdict_needs_the_difference_to_exceed_both_stds(flame, clip, expected):
    assert report.verdict({"mean": flame[0], "std": flame[1]}, {"mean": clip[0], "std": clip[1]}) == expected


class FakeRunner:
    """Scores each CLIP learning rate; None marks a run that is not complete."""

    def __init__(self, scores: dict[float, float | None]):
        self.scores, self.base_lr, self.work = scores, 5e-4, Path("work")

    def obtain(self, run, what):
        score = self.scores[run.lr]
        return None if score is None else {"summary": {runs.HEADLINE: score}}


def search(scores, clip_lrs=None):
    full = runs.Subset(shards=None, images=762, steps_per_epoch=11, full=True)
    args = fvc.parse_args(["--lr-search-epochs", "3"] + (["--clip-lrs", clip_lrs] if clip_lrs else []))
    return runs.search_clip_lr(FakeRunner(scores), full, args)


def test_lr_search_tries_half_one_and_twice_the_base_lr_and_keeps_the_best_on_dev():
    result = search({2.5e-4: 0.05, 5e-4: 0.08, 1e-3: 0.06})
    assert result["candidates"] == [2.5e-4, 5e-4, 1e-3]
    assert result["chosen"] == 5e-4
    assert [(s["lr"], s[runs.HEADLINE]) for s in result["scores"]] == [(2.5e-4, 0.05), (5e-4, 0.08), (1e-3, 0.06)]
    assert (result["epochs"], result["seed"], result["train_images"], result["metric"]) == (3, 0, 762, runs.HEADLINE)


def test_lr_search_chooses_among_the_complete_runs_and_a_single_lr_skips_it():
    assert search({2.5e-4: None, 5e-4: 0.02, 1e-3: 0.04})["chosen"] == 1e-3
    given = search({}, clip_lrs="3e-4")
    assert (given["candidates"], given["chosen"], given["scores"]) == ([3e-4], 3e-4, [])
    with pytest.raises(SystemExit, match="no CLIP learning-rate search run is complete"):
        search({2.5e-4: None, 5e-4: None, 1e-3: None})


def test_the_default_command_is_the_bare_script():
    assert fvc.budget_command(fvc.parse_args([])) == "python benchmarks/flame_vs_clip.py"
    assert fvc.budget_command(fvc.parse_args(["--epochs", "3", "--work", "/tmp/x"])) == (
        "python benchmarks/flame_vs_clip.py --epochs 3")


def record(mode, images, seed, r5):
    metrics = {f"{DEV}/mean_recall@5": r5, f"{DEV}/chance_mean_recall@5": 0.044, f"{DEV}/mean_recall@1": r5 / 4,
               "flickr8k-dev-long/mean_recall@5": 0.5}
    return {"name": f"{mode}-n{images}-s{seed}", "mode": mode, "seed": seed, "lr": 5e-4, "summary": metrics,
            "train": {"samples": images, "steps": 110, "epochs": 10 if images == 762 else 55}}


def test_data_efficiency_has_one_entry_per_run_a_curve_and_a_plot(tmp_path):
    records = [record(m, 762, s, r5) for m, r5 in (("flame", 0.1), ("clip", 0.06)) for s in (0, 1, 2)]
    records += [record("flame", 128, 0, 0.07), record("clip", 128, 0, 0.05)]
    records[1]["summary"][f"{DEV}/mean_recall@5"] = 0.12
    write_data_efficiency(records, {"description": "test"}, tmp_path)

    payload = json.loads((tmp_path / "data_efficiency.json").read_text())
    assert payload["budget"] == {"description": "test"}
    assert len(payload["runs"]) == 8
    first = payload["runs"][0]
    assert (first["mode"], first["train_images"], first["seed"], first["steps"]) == ("clip", 128, 0, 110)
    assert first["epochs"] == 55
    assert set(first["metrics"]) == {f"{DEV}/mean_recall@5", f"{DEV}/chance_mean_recall@5", f"{DEV}/mean_recall@1"}
    flame = {p["train_images"]: p for p in payload["curve"]["flame"]}
    assert flame[128]["values"] == [0.07] and flame[128]["std"] == 0.0
    assert flame[762]["seeds"] == [0, 1, 2] and flame[762]["mean"] == pytest.approx((0.1 + 0.12 + 0.1) / 3)
    assert flame[762]["std"] > 0
    assert (tmp_path / "data_efficiency.png").stat().st_size > 1000


def test_markdown_says_where_flame_wins():
    results = {"flame": {}, "clip": {}}
    for mode, r1, r5 in (("flame", (0.02, 0.001), (0.10, 0.01)), ("clip", (0.02, 0.002), (0.05, 0.01))):
        results[mode][f"{DEV}/mean_recall@1"] = {"mean": r1[0], "std": r1[1], "values": [0, 1]}
        results[mode][f"{DEV}/mean_recall@5"] = {"mean": r5[0], "std": r5[1], "values": [0, 1]}
        results[mode]["train/images_per_sec"] = {"mean": 300.0, "std": 1.0, "values": [0, 1]}
        results[mode]["train/last_loss"] = {"mean": 8.0, "std": 0.1, "values": [0, 1]}
    text = report.markdown(results, {"description": "test"})
    assert "| FLAME better? |" in text
    assert "| 0.1000 ± 0.0100 | 0.0500 ± 0.0100 | +0.0500 | yes |" in text
    assert ("Better: Flickr8k dev retrieval, mean R@5. Worse: nowhere. "
            "Within noise: Flickr8k dev retrieval, mean R@1.") in text
