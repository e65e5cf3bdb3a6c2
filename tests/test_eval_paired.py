"""Per-query scoring for the promotion gate: the gate scores through the runner's task code, so
its hits are the runner's metrics on a real model; the eval-set fingerprint over files and
settings; and the paired bootstrap."""

import json
import shutil

import numpy as np
import pytest
import torch

from evaluations import paired, runner
from evaluations.tasks import TASKS
from flame.config import load_config, repo_root
from flame.errors import FlameError

N_IMAGES = 6  # the first 6 sample-dev images and their 30 captions: seconds with the tiny LLM


def _with_gate_metric(config, gate_metric):
    return config.model_copy(update={"registry": config.registry.model_copy(update={"gate_metric": gate_metric})})


@pytest.mark.slow
def test_per_query_hits_average_to_the_runners_metrics(eval_model, eval_config):
    reported = runner.evaluate_benchmark(eval_model, "sample-dev-retrieval", None, eval_config.eval, limit=N_IMAGES)["metrics"]
    metrics = TASKS["retrieval"].per_query_metrics
    assert len(metrics) == 9 and "mean_recall@5" in metrics
    for metric in metrics:
        config = _with_gate_metric(eval_config, f"sample-dev-retrieval/{metric}")
        hits = paired.score(eval_model, paired.load_eval_set(config, limit=N_IMAGES))
        assert hits.metric == metric and hits.score == reported[metric], metric
        expected_queries = {"image_retrieval_recall": 5 * N_IMAGES, "text_retrieval_recall": N_IMAGES,
                            "mean_recall": 6 * N_IMAGES}[metric.split("@")[0]]
        assert (hits.n_units, hits.n_queries) == (N_IMAGES, expected_queries), metric
    assert 0 < reported["mean_recall@5"] < 1


@pytest.mark.slow
def test_a_checkpoint_scores_as_its_model(eval_model, eval_checkpoint, eval_config):
    """``score_checkpoint`` (what the gate calls) loads the checkpoint and scores it like the model in memory."""
    eval_set = paired.load_eval_set(eval_config, limit=N_IMAGES)
    from_disk, in_memory = paired.score_checkpoint(eval_checkpoint, eval_set), paired.score(eval_model, eval_set)
    assert from_disk.metric == eval_config.registry.gate_metric.split("/")[1]
    assert from_disk.score == pytest.approx(in_memory.score)
    assert all(np.array_equal(a, b) for a, b in zip(from_disk.units, in_memory.units))


def test_gate_metrics_that_cannot_be_scored_per_query_are_named(eval_config):
    for gate_metric, expected in [
        ("sample-dev-retrieval/mean_per_class_recall", "metric 'mean_per_class_recall' of a retrieval benchmark"),
        ("sample-dev-retrieval/mean_recall@3", "supported: image_retrieval_recall@1"),
        ("sample-dev-multilingual/zh_mean_recall@1", "supported: none"),
        ("imagenet-200x5-zeroshot/mean_per_class_recall", "supported: acc1, acc5"),
        ("sample-dev-retrieval", "expected '<benchmark>/<metric>'"),
        ("nope/mean_recall@5", "unknown benchmark 'nope'"),
    ]:
        with pytest.raises(FlameError, match=expected.replace("[", r"\[")):
            paired.load_eval_set(_with_gate_metric(eval_config, gate_metric))
    with pytest.raises(FlameError, match="limit must be at least 1, got 0"):
        paired.load_eval_set(eval_config, limit=0)


def test_the_eval_set_reads_images_with_the_configured_pixel_limit(eval_config):
    assert paired.load_eval_set(eval_config, limit=2).max_pixels == eval_config.image.max_pixels
    tight = eval_config.model_copy(update={"image": eval_config.image.model_copy(update={"max_pixels": 100})})
    with pytest.raises(FlameError, match=r"too large: .* > limit 100 \(image.max_pixels\)"):
        paired.load_eval_set(tight, limit=2)


@pytest.fixture
def shared_data(tmp_path, monkeypatch):
    """3-image stand-ins of flickr8k-866 (dev split) and imagenet-200x5 under $FLAME_SHARED_DATA."""
    root = tmp_path / "shared"
    folder = root / "flickr8k-866"
    (folder / "images").mkdir(parents=True)
    (root / "imagenet-200x5").mkdir()
    rows = [json.loads(line) for line in (repo_root() / "data/sample/dev.jsonl").read_text().splitlines()[:3]]
    flickr, imagenet = [], []
    for row, label in zip(rows, ("dog", "cat", "dog")):
        src = repo_root() / "data/sample" / row["url"]
        shutil.copy(src, folder / "images" / src.name)
        flickr.append(json.dumps({"image": f"images/{src.name}", "en": row["captions"], "flickr8k_split": "dev"}))
        imagenet.append(json.dumps({"image": str(folder / "images" / src.name), "label": label}))
    (folder / "manifest.jsonl").write_text("\n".join(flickr) + "\n")
    (root / "imagenet-200x5" / "manifest.jsonl").write_text("\n".join(imagenet) + "\n")
    monkeypatch.setenv("FLAME_SHARED_DATA", str(root))
    return folder


def test_the_eval_set_fingerprint_covers_files_and_the_settings_that_change_scores(shared_data):
    config = _with_gate_metric(load_config(profile="tiny"), "flickr8k-dev-retrieval/mean_recall@5")
    base = paired.eval_set_fingerprint(config)
    assert base == paired.eval_set_fingerprint(config) and len(base) == 64

    def changed(**sections):
        return paired.eval_set_fingerprint(config.model_copy(update={
            k: getattr(config, k).model_copy(update=v) for k, v in sections.items()}))

    assert changed(registry={"gate_metric": "flickr8k-dev-retrieval/mean_recall@1"}) != base
    assert changed(eval={"text_protocols": {**config.eval.text_protocols, "flickr8k-dev-retrieval": "raw"}}) != base
    assert changed(eval={"facet_pooling": "normalize_then_mean"}) != base
    assert changed(eval={"templates": "single"}) == base  # retrieval has no class templates
    assert changed(registry={"margin": 0.5}) == base
    assert paired.eval_set_fingerprint(config, limit=2) != base

    image = sorted((shared_data / "images").iterdir())[0]
    image.write_bytes(image.read_bytes() + b"\0")  # same name, other bytes
    assert paired.eval_set_fingerprint(config) != base
    image.write_bytes(image.read_bytes()[:-1])
    assert paired.eval_set_fingerprint(config) == base
    manifest = shared_data / "manifest.jsonl"
    manifest.write_text(manifest.read_text() + json.dumps({"image": "images/x.jpg", "en": ["x"], "flickr8k_split": "train"}) + "\n")
    assert paired.eval_set_fingerprint(config) != base  # the manifest's bytes count, not only the rows read

    zeroshot = _with_gate_metric(config, "imagenet-200x5-zeroshot/acc1")
    single = zeroshot.model_copy(update={"eval": zeroshot.eval.model_copy(update={"templates": "single"})})
    assert paired.eval_set_fingerprint(single) != paired.eval_set_fingerprint(zeroshot)


@pytest.mark.slow
def test_zero_shot_hits_average_to_the_runners_accuracy(eval_model, eval_config, shared_data):
    eval_cfg = eval_config.eval.model_copy(update={"templates": "single"})
    config = _with_gate_metric(eval_config.model_copy(update={"eval": eval_cfg}), "imagenet-200x5-zeroshot/acc1")
    reported = runner.evaluate_benchmark(eval_model, "imagenet-200x5-zeroshot", None, eval_cfg)["metrics"]
    hits = paired.score(eval_model, paired.load_eval_set(config))
    assert hits.score == reported["acc1"] and (hits.n_units, hits.n_queries) == (3, 3)
    # acc5 is a gate metric of zero-shot, but 2 classes have no acc5: named, not a KeyError.
    acc5 = paired.load_eval_set(_with_gate_metric(config, "imagenet-200x5-zeroshot/acc5"))
    with pytest.raises(FlameError, match="reported no per-query acc5 on this eval set .*at least 5 classes"):
        paired.score(eval_model, acc5)


def _retrieval_hits(t2i, i2t, text_to_image) -> paired.QueryHits:
    """mean_recall hits: t2i per text, i2t per image."""
    t2i, i2t = torch.as_tensor(t2i, dtype=torch.bool), torch.as_tensor(i2t, dtype=torch.bool)
    units = (np.asarray(text_to_image), np.arange(len(i2t)))
    return paired.QueryHits("mean_recall@5", (t2i, i2t), units, len(i2t))


def _random_pair(n_images=100, texts_per_image=5, champion_rate=0.3, extra=0.0, seed=0):
    """A champion hitting ``champion_rate`` of queries, and a challenger hitting the same ones
    plus ``extra`` of the rest."""
    rng = np.random.default_rng(seed)
    t2i_index = np.repeat(np.arange(n_images), texts_per_image)
    champ = [rng.random(n_images * texts_per_image) < champion_rate, rng.random(n_images) < champion_rate]
    chal = [c | (rng.random(len(c)) < extra) for c in champ]
    return _retrieval_hits(*chal, t2i_index), _retrieval_hits(*champ, t2i_index)


def test_bootstrap_of_identical_models_is_zero_and_covers_zero():
    challenger, champion = _random_pair(extra=0.0)
    assert challenger.score == champion.score
    diff, low, high = paired.paired_bootstrap(challenger, champion, samples=500, confidence=0.95, seed=1)
    assert diff == 0.0 and low <= 0.0 <= high


def test_bootstrap_of_a_clearly_better_model_has_its_lower_bound_above_zero():
    challenger, champion = _random_pair(extra=0.2)
    diff, low, high = paired.paired_bootstrap(challenger, champion, samples=1000, confidence=0.95, seed=0)
    assert diff == pytest.approx(challenger.score - champion.score)
    assert 0 < low < diff < high
    # A tiny, noisy improvement is not clear: the interval reaches below zero.
    small_chal, small_champ = _random_pair(n_images=30, extra=0.01, seed=3)
    small = paired.paired_bootstrap(small_chal, small_champ, samples=1000, confidence=0.95, seed=0)
    assert small[1] <= 0


def test_bootstrap_is_deterministic_per_seed_and_pairs_the_same_draws():
    challenger, champion = _random_pair(extra=0.05, seed=7)
    first = paired.paired_bootstrap(challenger, champion, samples=400, confidence=0.9, seed=42)
    assert first == paired.paired_bootstrap(challenger, champion, samples=400, confidence=0.9, seed=42)
    assert first[1:] != paired.paired_bootstrap(challenger, champion, samples=400, confidence=0.9, seed=43)[1:]
    wider = paired.paired_bootstrap(challenger, champion, samples=400, confidence=0.99, seed=42)
    assert wider[1] <= first[1] and wider[2] >= first[2]
    # Paired: the same draw for both models, so a constant shift has no spread at all.
    all_hit = _retrieval_hits(np.ones(500, bool), np.ones(100, bool), np.repeat(np.arange(100), 5))
    none_hit = _retrieval_hits(np.zeros(500, bool), np.zeros(100, bool), np.repeat(np.arange(100), 5))
    assert paired.paired_bootstrap(all_hit, none_hit, samples=200, seed=0) == (1.0, 1.0, 1.0)


def test_bootstrap_refuses_scores_on_different_queries():
    a, _ = _random_pair(n_images=10)
    b, _ = _random_pair(n_images=11)
    with pytest.raises(FlameError, match="not the same eval set"):
        paired.paired_bootstrap(a, b)
    with pytest.raises(FlameError, match="confidence must be between 0 and 1, got 1.5"):
        paired.paired_bootstrap(a, a, confidence=1.5)
    with pytest.raises(FlameError, match="samples must be at least 1, got 0"):
        paired.paired_bootstrap(a, a, samples=0)
