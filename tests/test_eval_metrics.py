"""Evaluation metrics agree with the clip-benchmark package's own functions on the same embeddings."""

import math

import numpy as np
import pytest
import torch
from clip_benchmark.metrics import zeroshot_classification as cb_cls
from clip_benchmark.metrics import zeroshot_retrieval as cb_ret
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

from evaluations.hits import RECALL_METRICS
from evaluations.metrics import classification_metrics, retrieval_metrics, score_classification, score_retrieval


def _unit(n, d, gen):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1)


def _clip_benchmark_retrieval(image_emb, text_emb, text_to_image, k):
    """clip_benchmark.metrics.zeroshot_retrieval.evaluate's computation after its embedding loop."""
    scores = text_emb @ image_emb.t()
    positive_pairs = torch.zeros_like(scores, dtype=bool)
    positive_pairs[torch.arange(len(scores)), text_to_image] = True
    bs = 16
    t2i = (cb_ret.batchify(cb_ret.recall_at_k, scores, positive_pairs, bs, "cpu", k=k) > 0).float().mean().item()
    i2t = (cb_ret.batchify(cb_ret.recall_at_k, scores.T, positive_pairs.T, bs, "cpu", k=k) > 0).float().mean().item()
    return t2i, i2t


@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_matches_clip_benchmark(seed):
    gen = torch.Generator().manual_seed(seed)
    n_images, d = 40, 16
    # 1 to 5 captions per image; texts near their image so recall is neither 0 nor 1.
    text_to_image = torch.cat([torch.full((int(c),), i) for i, c in enumerate(torch.randint(1, 6, (n_images,), generator=gen))])
    image_emb = _unit(n_images, d, gen)
    text_emb = torch.nn.functional.normalize(image_emb[text_to_image] + 1.2 * torch.randn(len(text_to_image), d, generator=gen), dim=-1)
    ours = retrieval_metrics(image_emb, text_emb, text_to_image)
    for k in (1, 5, 10):
        t2i, i2t = _clip_benchmark_retrieval(image_emb, text_emb, text_to_image, k)
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx(t2i, abs=1e-7)
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx(i2t, abs=1e-7)
        assert ours[f"mean_recall@{k}"] == pytest.approx((t2i + i2t) / 2)
    assert 0 < ours["image_retrieval_recall@1"] < 1


def test_retrieval_chance_levels_are_exact():
    gen = torch.Generator().manual_seed(0)
    image_emb = _unit(10, 8, gen)
    text_emb = _unit(20, 8, gen)
    m = retrieval_metrics(image_emb, text_emb, [i // 2 for i in range(20)], ks=(1, 5))
    assert m["chance_image_retrieval_recall@1"] == pytest.approx(1 / 10)
    assert m["chance_image_retrieval_recall@5"] == pytest.approx(5 / 10)
    # Each image has 2 of 20 texts: P(one of them in a random top-5) = 1 - C(18,5)/C(20,5).
    assert m["chance_text_retrieval_recall@5"] == pytest.approx(1 - math.comb(18, 5) / math.comb(20, 5))
    # Empirically: random rankings hit about that often.
    hits = []
    for s in range(300):
        g = torch.Generator().manual_seed(100 + s)
        hits.append(retrieval_metrics(image_emb, _unit(20, 8, g), [i // 2 for i in range(20)], ks=(5,))["text_retrieval_recall@5"])
    assert sum(hits) / len(hits) == pytest.approx(m["chance_text_retrieval_recall@5"], abs=0.03)


def test_perfect_embeddings_give_full_recall():
    image_emb = torch.eye(6)
    m = retrieval_metrics(image_emb, image_emb.repeat_interleave(2, 0), torch.arange(6).repeat_interleave(2))
    assert m["image_retrieval_recall@1"] == 1.0 and m["text_retrieval_recall@1"] == 1.0


def test_classification_matches_clip_benchmark():
    gen = torch.Generator().manual_seed(3)
    n_classes, n = 12, 90
    targets = torch.randint(0, n_classes, (n,), generator=gen)
    logits = torch.randn(n, n_classes, generator=gen) + 1.5 * torch.nn.functional.one_hot(targets, n_classes)
    ours = classification_metrics(logits, targets)
    labels = list(range(n_classes))
    assert ours["acc1"] == pytest.approx(top_k_accuracy_score(targets, logits, k=1, labels=labels))
    assert ours["acc5"] == pytest.approx(top_k_accuracy_score(targets, logits, k=5, labels=labels))
    try:
        acc1, acc5 = cb_cls.accuracy(logits, targets, topk=(1, 5))
    except TypeError:
        # clip-benchmark 1.6's accuracy() calls float() on a 1-element array, which numpy >= 2.4
        # refuses; sklearn's top-k accuracy above is the same definition.
        assert tuple(int(x) for x in np.__version__.split(".")[:2]) >= (2, 4)
    else:
        assert ours["acc1"] == pytest.approx(acc1)
        assert ours["acc5"] == pytest.approx(acc5)
    # clip-benchmark's mean_per_class_recall is sklearn's balanced accuracy of the top-1 prediction.
    assert ours["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(targets, logits.argmax(dim=1)))
    assert ours["chance_acc1"] == pytest.approx(1 / 12) and ours["chance_acc5"] == pytest.approx(5 / 12)


def test_every_recall_and_accuracy_is_the_score_of_its_per_query_hits():
    gen = torch.Generator().manual_seed(5)
    text_to_image = torch.arange(8).repeat_interleave(3)
    scores = score_retrieval(_unit(8, 6, gen), _unit(24, 6, gen), text_to_image)
    assert tuple(scores.hits) == RECALL_METRICS
    for name, hits in scores.hits.items():
        assert hits.metric == name and hits.n_units == 8 and scores.metrics[name] == hits.score, name
    t2i, i2t, mean = (scores.hits[f"{m}@5"] for m in ("image_retrieval_recall", "text_retrieval_recall", "mean_recall"))
    assert t2i.n_queries == 24 and np.array_equal(t2i.units[0], text_to_image.numpy())  # a text belongs to its image
    assert i2t.n_queries == 8 and np.array_equal(i2t.units[0], np.arange(8))
    assert mean.hits == t2i.hits + i2t.hits and mean.score == (t2i.score + i2t.score) / 2

    targets = torch.randint(0, 6, (30,), generator=gen)
    logits = torch.randn(30, 6, generator=gen)
    probe = score_classification(logits, targets, prefix="lp_")
    assert tuple(probe.hits) == ("lp_acc1", "lp_acc5")
    assert all(probe.metrics[name] == hits.score and hits.n_queries == hits.n_units == 30 for name, hits in probe.hits.items())
    assert tuple(score_classification(logits[:, :3], targets % 3).hits) == ("acc1",)  # acc5 needs 5 classes


def test_bad_metric_inputs_are_named():
    with pytest.raises(ValueError, match="text_to_image has 3 entries for 4 texts"):
        retrieval_metrics(torch.eye(4), torch.eye(4), [0, 1, 2])
    with pytest.raises(ValueError, match="images have no text"):
        retrieval_metrics(torch.eye(4), torch.eye(4)[:2], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.full((2, 2), float("nan")), torch.eye(2), [0, 1])
