"""Benchmarks on a real, freshly initialised FlameModel (tiny ViT + the frozen tiny LLM),
cross-checked against the clip-benchmark package run on the same model."""

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from clip_benchmark.metrics import zeroshot_classification as cb_cls
from clip_benchmark.metrics import zeroshot_retrieval as cb_ret
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

from evaluations import datasets as ds
from evaluations import runner
from evaluations.embedding import embed_texts
from flame.data.images import read_image
from flame.model import FlameModel, ModelConfig
from evaluations.benchmarks import get_benchmark
from evaluations.templates import SHORT
from evaluations.text_cache import TextEmbeddingCache
from tests.fixtures.huge_png import write_huge_png

pytestmark = pytest.mark.slow


class ClipBenchmarkView:
    """Presents a FlameModel the way clip-benchmark expects: its "tokenizer" turns texts into
    indices, and ``encode_text`` maps them back to strings for the frozen LLM."""

    def __init__(self, model, facet_set="raw"):
        self.model, self.texts, self.facet_set = model, [], facet_set

    def tokenizer(self, texts):
        start = len(self.texts)
        self.texts.extend(texts)
        return torch.arange(start, start + len(texts))

    def encode_image(self, pixels):
        return self.model.encode_image(pixels)

    def encode_text(self, ids):
        return self.model.encode_text([self.texts[i] for i in ids.tolist()], facet_set=self.facet_set)


def _loader(model, images, targets, batch_size=4):
    items = [(model.preprocess(read_image(p)), t) for p, t in zip(images, targets)]

    def collate(batch):
        first = batch[0][1]
        ys = [y for _, y in batch]
        return torch.stack([x for x, _ in batch]), (torch.tensor(ys) if isinstance(first, int) else ys)

    return torch.utils.data.DataLoader(items, batch_size=batch_size, collate_fn=collate)


def test_retrieval_matches_clip_benchmark_on_the_same_model(eval_model, eval_config, tmp_path):
    n = 5
    result = runner.evaluate_benchmark(eval_model, "sample-dev-retrieval", tmp_path, eval_config.eval, limit=n, pretrained="fresh")
    assert set(result) >= {"dataset", "model", "pretrained", "task", "metrics"}
    assert result["dataset"] == "sample-dev-retrieval" and result["task"] == "zeroshot_retrieval"
    assert result["details"]["n_images"] == n and result["details"]["n_texts"] == 5 * n
    data = get_benchmark("sample-dev-retrieval").load(get_benchmark("sample-dev-retrieval").path(), eval_config.eval).subset(list(range(n)))
    captions = [[t for t, i in zip(data.texts, data.text_to_image) if i == img] for img in range(n)]
    # the paper's protocol: English retrieval through the 7 long facets, averaged then normalised
    assert result["text_protocol"] == {"text_mode": "flame", "facet_set": "long", "K": 7, "pooling": "mean_then_normalize"}
    view = ClipBenchmarkView(eval_model, "long")
    expected = cb_ret.evaluate(view, _loader(eval_model, data.images, captions), view.tokenizer, "cpu", amp=False, recall_k_list=[1, 5])
    for key, value in expected.items():
        assert result["metrics"][key] == pytest.approx(value, abs=1e-6), key
    m = result["metrics"]
    assert m["mean_recall@5"] == pytest.approx((m["image_retrieval_recall@5"] + m["text_retrieval_recall@5"]) / 2)
    assert m["chance_image_retrieval_recall@1"] == pytest.approx(1 / n)
    for png in result["plots"]:
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.split("_")[-1] for p in result["plots"]} == {"metrics.png", "examples.png"}


def test_zeroshot_matches_clip_benchmark_with_labels_in_any_language(eval_model, eval_config, eval_manifest):
    labels = ["狗", "person", "كلب"]
    path = eval_manifest(6, extra=lambda i, row: {"label": labels[i % 3]})
    result = runner.evaluate_manifest(eval_model, path, "zeroshot_classification", config=eval_config.eval)
    assert result["task"] == "zeroshot_classification" and result["details"]["n_templates"] == len(SHORT)
    assert result["text_protocol"] == {"text_mode": "flame", "facet_set": "raw", "K": 1, "pooling": "mean_then_normalize",
                                       "templates": "short", "n_templates": len(SHORT)}
    data = ds.load_classification(path)
    view = ClipBenchmarkView(eval_model)
    templates = [t.replace("{}", "{c}") for t in SHORT]
    classifier = cb_cls.zero_shot_classifier(view, view.tokenizer, data.classnames, templates, "cpu", amp=False)
    logits, target = cb_cls.run_classification(view, classifier, _loader(eval_model, data.images, data.labels), "cpu", amp=False)
    m = result["metrics"]
    assert m["acc1"] == pytest.approx(top_k_accuracy_score(target, logits, k=1, labels=[0, 1, 2]))
    assert m["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(target, logits.argmax(dim=1)))
    assert m["chance_acc1"] == pytest.approx(1 / 3) and "acc5" not in m  # fewer than 5 classes


def test_long_multilingual_text_pairs_and_linear_probe(eval_model, eval_config, eval_manifest, tmp_path):
    long_path = eval_manifest(3, extra=lambda i, row: {"captions": " ".join(row["captions"])}, name="long.jsonl")
    long = runner.evaluate_manifest(eval_model, long_path, "long_retrieval", config=eval_config.eval)
    assert long["details"]["facet_set"] == "long" and long["details"]["n_texts"] == 3
    assert 0 <= long["metrics"]["mean_recall@1"] <= 1

    multi_path = eval_manifest(3, extra=lambda i, row: {"zh": row["zh"][:1], "ar": row["ar"][0]}, name="multi.jsonl")
    multi = runner.evaluate_manifest(eval_model, multi_path, "multilingual_retrieval", config=eval_config.eval, languages=["zh", "ar"])
    m = multi["metrics"]
    assert set(multi["details"]["languages"]) == {"zh", "ar"}
    assert m["mean_recall@1"] == pytest.approx((m["zh_mean_recall@1"] + m["ar_mean_recall@1"]) / 2)
    assert m["chance_zh_image_retrieval_recall@1"] == pytest.approx(1 / 3)

    probe_path = eval_manifest(6, extra=lambda i, row: {"label": "ab"[i % 2]}, name="probe.jsonl")
    cfg = eval_config.eval.model_copy(update={"linear_probe_train_per_class": 2})
    probe = runner.evaluate_manifest(eval_model, probe_path, "linear_probe", config=cfg)
    assert probe["details"]["n_train"] == 4 and probe["details"]["n_test"] == 2
    assert probe["details"]["image_features"] == "backbone" and probe["details"]["feature_dim"] == eval_model.visual.width
    assert probe["metrics"]["chance_lp_acc1"] == 0.5 and probe["metrics"]["lp_acc1"] in (0.0, 0.5, 1.0)

    descriptions = ["A red kite over a grey beach with two children running.",
                    "An empty kitchen with a steel kettle on a gas stove.",
                    "Three horses grazing in a foggy green field at dawn."]
    pairs = ds.TextPairSet("pairs", descriptions, [d.replace("A ", "One ").replace("An ", "One ") for d in descriptions])
    text = runner.evaluate_dataset(eval_model, "text_pair_retrieval", [pairs], "pairs", eval_config.eval)
    t = text["metrics"]
    assert {"raw_pair_recall@1", "long_pair_recall@1", "chance_raw_pair_recall@1", "pairs_long_pair_recall@5"} <= set(t)
    # Near-identical descriptions find each other through the frozen LLM alone.
    assert t["raw_pair_recall@1"] > t["chance_raw_pair_recall@1"]


def _evaluation_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("evaluations")]


def test_flame_evaluate_cli_all_and_manifest_errors(eval_checkpoint, eval_manifest, tmp_path, monkeypatch, capsys, caplog):
    from flame.app.cli import main

    monkeypatch.setenv("FLAME_SHARED_DATA", str(tmp_path / "no-shared-data"))
    out = tmp_path / "eval" / "results.json"
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", "--checkpoint", str(eval_checkpoint), "--benchmark", "all", "--limit", "2", "--out", str(out)]) == 0
    payload = json.loads(out.read_text(encoding="utf-8"))
    assert [r["dataset"] for r in payload["results"]] == ["sample-dev-retrieval", "sample-dev-long", "sample-dev-multilingual"]
    assert "flickr8k-dev-retrieval" in {s["benchmark"] for s in payload["skipped"]}
    # one line for all the benchmarks skipped, naming them
    [warned] = _evaluation_warnings(caplog)
    assert warned.startswith(f"skipping {len(payload['skipped'])} benchmarks whose data is missing") and "iiw-long-text" in warned
    assert 0 <= payload["summary"]["sample-dev-retrieval/mean_recall@5"] <= 1
    assert "sample-dev-multilingual/zh_mean_recall@1" in payload["summary"]
    assert (out.parent / "results_sample-dev-retrieval_examples.png").exists()
    assert "skipped flickr8k-dev-retrieval" in capsys.readouterr().out

    manifest = eval_manifest(2, extra=lambda i, row: {"captions": row["captions"][:1]})
    with manifest.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"image": "imgs/gone.jpg", "captions": ["a missing photo"]}) + "\n")
    bad = tmp_path / "bad.json"
    assert main(["evaluate", "--checkpoint", str(eval_checkpoint), "--manifest", str(manifest), "--task", "retrieval", "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "1 of 3" in err and "gone.jpg: file not found" in err and not bad.exists()
    assert main(["evaluate", "--checkpoint", str(eval_checkpoint), "--manifest", str(manifest), "--task", "retrieval",
                 "--skip-missing", "--no-plots", "--out", str(bad)]) == 0
    result = json.loads(bad.read_text(encoding="utf-8"))
    assert result["details"]["skipped_images"] == 1 and result["details"]["n_images"] == 2
    assert result["summary"][f"{manifest.stem}/mean_recall@1"] == result["metrics"]["mean_recall@1"]

    assert main(["evaluate", "--checkpoint", str(eval_checkpoint), "--benchmark", "nope", "--out", str(bad)]) == 2
    assert "available: sample-dev-retrieval" in capsys.readouterr().err


def test_evaluate_skip_missing_counts_a_decompression_bomb(eval_checkpoint, eval_manifest, tmp_path, caplog):
    from flame.app.cli import main

    manifest = eval_manifest(2, extra=lambda i, row: {"captions": row["captions"][:1]})
    write_huge_png(manifest.parent / "imgs" / "bomb.png")
    with manifest.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"image": "imgs/bomb.png", "captions": ["a black square"]}) + "\n")
    out = tmp_path / "result.json"
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", "--checkpoint", str(eval_checkpoint), "--manifest", str(manifest), "--task", "retrieval",
                     "--skip-missing", "--no-plots", "--out", str(out)]) == 0
    details = json.loads(out.read_text(encoding="utf-8"))["details"]
    assert details["n_images"] == 2 and details["skipped_images"] == 1
    assert "bomb.png: too large" in details["skipped_image_examples"][0]
    [warned] = _evaluation_warnings(caplog)
    assert warned.startswith(f"{manifest.stem}: skipped 1 unreadable images") and "too large" in warned


def test_rows_without_captions_are_counted_and_warned_once(eval_model, eval_config, eval_manifest, caplog):
    manifest = eval_manifest(4, extra=lambda i, row: {"captions": row["captions"][:1] if i < 2 else ["", " "]})
    with caplog.at_level(logging.WARNING):
        result = runner.evaluate_manifest(eval_model, manifest, "retrieval", config=eval_config.eval)
    assert result["details"]["skipped_rows_without_text"] == 2 and result["details"]["n_images"] == 2
    assert _evaluation_warnings(caplog) == [f"{manifest.stem}: skipped 2 rows without text (details.skipped_rows_without_text)"]


def test_text_embeddings_are_cached_per_fingerprint(eval_model, eval_text_cache):
    texts = ["a dog runs on the beach", "二人の子供が公園で遊んでいる"]
    name = "raw.mean_then_normalize"
    first = embed_texts(eval_model, texts, "raw", use_cache=True)
    cache = TextEmbeddingCache(eval_model.text_fingerprint, name)
    assert cache.path.parent == eval_text_cache / eval_model.text_fingerprint
    found, missing = cache.get(texts)
    assert missing == [] and torch.equal(torch.stack([found[0], found[1]]), first)
    assert torch.allclose(embed_texts(eval_model, texts, "raw", use_cache=False), first, atol=1e-5)
    # A damaged cache part is ignored (and rebuilt), never trusted.
    for part in cache.path.glob("part-*.safetensors"):
        part.write_bytes(b"garbage")
    assert TextEmbeddingCache(eval_model.text_fingerprint, name).get(texts)[1] == [0, 1]
    assert torch.allclose(embed_texts(eval_model, texts, "raw", use_cache=True), first, atol=1e-5)
    assert TextEmbeddingCache(eval_model.text_fingerprint, name).get(texts)[1] == []


class CountingEncoder:
    """The real text encoder, counting the captions it is asked to embed."""

    def __init__(self, encoder):
        self.encoder, self.captions = encoder, 0

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode(self, captions, facet_set, batch_size=None):
        self.captions += len(captions)
        return self.encoder.encode(captions, facet_set, batch_size)


def test_class_prompts_are_embedded_once_per_fingerprint(eval_model, eval_config, eval_manifest, monkeypatch):
    counting = CountingEncoder(eval_model.text.encoder)
    monkeypatch.setattr(eval_model.text, "_encoder", counting)
    path = eval_manifest(4, extra=lambda i, row: {"label": ["tabby cat", "canoe", "sea anemone", "tractor"][i]})
    config = eval_config.eval.model_copy(update={"templates": "single"})
    first = runner.evaluate_manifest(eval_model, path, "zeroshot_classification", config=config)
    assert counting.captions == 4  # 4 classes x 1 template, raw prompt
    second = runner.evaluate_manifest(eval_model, path, "zeroshot_classification", config=config)
    assert counting.captions == 4  # the second evaluation of the same classes embeds nothing
    assert second["metrics"] == first["metrics"]


def test_text_protocol_is_configurable_per_benchmark_and_pools_like_the_reference(eval_model, eval_config):
    texts = ["Two dogs play in the snow", "A man rides a red bicycle past a cafe"]
    per_facet = eval_model.text.encoder.encode(texts, "long")  # [N, 7, D] raw hidden states
    pooled = embed_texts(eval_model, texts, "long")
    assert torch.allclose(pooled, torch.nn.functional.normalize(per_facet.mean(dim=1), dim=-1), atol=1e-5)
    unit_first = embed_texts(eval_model, texts, "long", pooling="normalize_then_mean")
    expected = torch.nn.functional.normalize(torch.nn.functional.normalize(per_facet, dim=-1).mean(dim=1), dim=-1)
    assert torch.allclose(unit_first, expected, atol=1e-5) and not torch.allclose(unit_first, pooled, atol=1e-4)

    config = eval_config.eval.model_copy(update={"text_protocols": {**eval_config.eval.text_protocols, "sample-dev-retrieval": "raw"},
                                                 "plots": False})
    result = runner.evaluate_benchmark(eval_model, "sample-dev-retrieval", config=config, limit=2)
    assert result["text_protocol"]["facet_set"] == "raw" and result["details"]["facet_set"] == "raw"
    long = runner.evaluate_benchmark(eval_model, "sample-dev-long", config=config, limit=2)
    assert long["text_protocol"]["facet_set"] == "long"  # only the named benchmark changed
    bad = config.model_copy(update={"text_protocols": {"retreival": "raw"}})
    with pytest.raises(Exception, match=r"eval\.text_protocols\.retreival: not a task"):
        runner.evaluate_benchmark(eval_model, "sample-dev-retrieval", config=bad, limit=2)


def test_linear_probe_scores_the_image_towers_features_before_the_projector(eval_config, eval_manifest):
    """As the reference evaluates it (encode_image(visual_only=True)): the pooled backbone
    features, normalised, of the backbone's width, and the projector never runs."""
    torch.manual_seed(0)
    # no LLM needed
    model = FlameModel(ModelConfig(embed_dim=48, image=eval_config.image, text=eval_config.text.model_dump(mode="json"))).eval()
    projector_calls = []
    model.visual.projector.register_forward_hook(lambda *args: projector_calls.append(1))
    path = eval_manifest(6, extra=lambda i, row: {"label": "ab"[i % 2]}, name="probe.jsonl")
    config = eval_config.eval.model_copy(update={"linear_probe_train_per_class": 2})
    memo = {}
    probe = runner.evaluate_manifest(model, path, "linear_probe", config=config, image_memo=memo)

    assert probe["details"]["image_features"] == "backbone"
    assert probe["details"]["feature_dim"] == model.visual.width == 192 and model.embed_dim == 48
    assert not projector_calls
    images = ds.load_classification(path).images
    with torch.no_grad():
        pixels = torch.stack([model.preprocess(read_image(p)) for p in images])
        expected = F.normalize(model.encode_image_backbone(pixels), dim=-1)
    torch.testing.assert_close(torch.stack([memo["backbone", p] for p in images]), expected)
