"""Evaluation manifests, the benchmark registry and image checks: no model needed."""

import json

import pytest

from evaluations import datasets as ds
from evaluations.image_checks import check_images
from evaluations.benchmarks import BENCHMARKS, get_benchmark
from evaluations.runner import expand_names
from evaluations.tasks.linear_probe import fixed_split
from flame.config import EvalConfig, repo_root
from flame.data.manifest import resolve_location
from flame.errors import FlameError

SAMPLE_DEV = repo_root() / "data" / "sample" / "dev.jsonl"


def test_sample_dev_benchmarks_load_the_bundled_split():
    cfg = EvalConfig()
    ret = get_benchmark("sample-dev-retrieval").load(SAMPLE_DEV, cfg)
    assert len(ret.images) == 113 and len(ret.texts) == 5 * 113
    assert all(p.startswith(str(repo_root() / "data" / "sample" / "images")) for p in ret.images)
    long = get_benchmark("sample-dev-long").load(SAMPLE_DEV, cfg)
    assert len(long.texts) == 113 and long.text_to_image == list(range(113))
    first = json.loads(SAMPLE_DEV.read_text(encoding="utf-8").splitlines()[0])
    assert all(c.rstrip(" .") in long.texts[0] for c in first["captions"])
    multi = get_benchmark("sample-dev-multilingual").load(SAMPLE_DEV, cfg)
    assert set(multi.languages) == {"en", "zh", "ar", "de", "fr", "cs"}
    zh_texts, zh_index = multi.languages["zh"]
    assert zh_texts[:5] == first["zh"] and zh_index[:5] == [0] * 5
    # Multi30k: German as its list of five where present, French/Czech as one string.
    assert multi.languages["fr"][0][0] == first["m30k_task1_fr"]
    assert multi.languages["de"][0][:5] == first["m30k_task2_de"]


def test_flickr8k_loader_uses_only_the_dev_split(tmp_path):
    rows = [
        {"image": "a.jpg", "flickr8k_split": "train", "en": ["a"], "zh": ["甲"]},
        {"image": "b.jpg", "flickr8k_split": "dev", "en": ["b1", "b2"], "zh": ["乙"], "m30k_task1_de": "Ein b"},
        {"image": "c.jpg", "flickr8k_split": "none", "en": ["c"]},
    ]
    root = tmp_path / "shared"
    (root / "flickr8k-866").mkdir(parents=True)
    (root / "flickr8k-866" / "manifest.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    cfg = EvalConfig()
    bench = get_benchmark("flickr8k-dev-retrieval")
    path = root / "flickr8k-866" / "manifest.jsonl"
    ret = bench.load(path, cfg)
    assert ret.texts == ["b1", "b2"] and ret.images == [str(root / "flickr8k-866" / "b.jpg")]
    assert get_benchmark("flickr8k-dev-long").load(path, cfg).texts == ["b1. b2."]
    multi = get_benchmark("flickr8k-dev-multilingual").load(path, cfg)
    assert multi.languages == {"en": (["b1", "b2"], [0, 0]), "zh": (["乙"], [0]), "de": (["Ein b"], [0])}


def test_shared_data_location_and_all_skips_what_is_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAME_SHARED_DATA", str(tmp_path / "nowhere"))
    assert ds.shared_data_dir() == tmp_path / "nowhere"
    run, skipped = expand_names(["all"])
    assert run == ["sample-dev-retrieval", "sample-dev-long", "sample-dev-multilingual"]
    assert {s["benchmark"] for s in skipped} == set(BENCHMARKS) - set(run)
    assert all(str(tmp_path / "nowhere") in s["reason"] for s in skipped)


def test_unknown_benchmark_lists_the_available_ones():
    with pytest.raises(FlameError) as err:
        expand_names(["imagenet-1k"])
    assert "unknown benchmark 'imagenet-1k'" in str(err.value)
    for name in BENCHMARKS:
        assert name in str(err.value)


def test_manifest_images_relative_absolute_and_urls(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in [
        {"image": "sub/x.jpg", "captions": "one string"},
        {"image": str(tmp_path / "y.jpg"), "captions": ["c1", " ", "c2"]},
        {"image": "file:///data/z.jpg", "captions": []},
        {"image": "http://127.0.0.1:1/w.jpg", "captions": ["w"]},
    ]), encoding="utf-8")
    data = ds.load_retrieval(manifest)
    assert data.images == [str(tmp_path / "sub" / "x.jpg"), str(tmp_path / "y.jpg"), "http://127.0.0.1:1/w.jpg"]
    assert data.texts == ["one string", "c1", "c2", "w"] and data.text_to_image == [0, 1, 1, 2]
    assert data.skipped_rows == 1  # the row without captions is counted, not silently dropped
    assert resolve_location("file:///data/z.jpg", tmp_path) == "/data/z.jpg"


def test_labels_and_captions_in_any_language(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"image": "a.jpg", "标签": "狗", "zh": ["一只狗在草地上奔跑。"]},
        {"image": "b.jpg", "标签": "猫", "zh": "一只猫。"},
        {"image": "c.jpg", "标签": "كلب", "zh": ["沙发上的狗"]},
    ]), encoding="utf-8")
    cls = ds.load_classification(manifest, label_field="标签")
    assert cls.classnames == sorted(["狗", "猫", "كلب"])
    assert [cls.classnames[i] for i in cls.labels] == ["狗", "猫", "كلب"]
    ret = ds.load_retrieval(manifest, caption_fields=("zh",))
    assert ret.texts == ["一只狗在草地上奔跑。", "一只猫。", "沙发上的狗"]


def test_bad_manifests_name_file_line_and_key(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"image": "a.jpg", "captions": ["x"]}\n{"image": \n', encoding="utf-8")
    with pytest.raises(FlameError, match=r"bad.jsonl:2: invalid JSON"):
        ds.load_retrieval(bad_json)
    no_image = tmp_path / "noimg.jsonl"
    no_image.write_text('{"captions": ["x"]}\n', encoding="utf-8")
    with pytest.raises(FlameError, match=r"noimg.jsonl:1: no image path"):
        ds.load_retrieval(no_image)
    bad_caption = tmp_path / "cap.jsonl"
    bad_caption.write_text('{"image": "a.jpg", "captions": [1, 2]}\n', encoding="utf-8")
    with pytest.raises(FlameError, match=r"cap.jsonl:1: key 'captions' must be a string or a list of strings"):
        ds.load_retrieval(bad_caption)
    no_label = tmp_path / "lab.jsonl"
    no_label.write_text('{"image": "a.jpg", "label": "dog"}\n{"image": "b.jpg"}\n', encoding="utf-8")
    with pytest.raises(FlameError, match=r"lab.jsonl:2: key 'label' must be a non-empty class name"):
        ds.load_classification(no_label)
    with pytest.raises(FlameError, match="not found"):
        ds.load_retrieval(tmp_path / "absent.jsonl")
    with pytest.raises(FlameError, match="language 'xx'"):
        ds.load_multilingual(no_label, languages=["xx"])


def test_missing_and_corrupt_images_are_listed_or_skipped(eval_manifest, tmp_path):
    path = eval_manifest(3)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"image": "imgs/missing.jpg", "captions": ["gone"]}) + "\n")
        fh.write(json.dumps({"image": "imgs/broken.jpg", "captions": ["broken"]}) + "\n")
    data = ds.load_retrieval(path)
    with pytest.raises(FlameError) as err:
        check_images(data.images)
    msg = str(err.value)
    assert "2 of 5" in msg and "missing.jpg: file not found" in msg and "broken.jpg: not a readable image" in msg
    assert "--skip-missing" in msg
    check = check_images(data.images, skip_missing=True)
    assert check.ok == [0, 1, 2] and len(check.failed) == 2
    kept = data.subset(check.ok)
    assert len(kept.images) == 3 and "gone" not in kept.texts and kept.text_to_image[-1] == 2


def test_linear_probe_split_is_fixed_per_class():
    train, test = fixed_split([0, 0, 1, 0, 1, 1, 0, 1], train_per_class=2)
    assert train == [0, 1, 2, 4] and test == [3, 5, 6, 7]


def test_images_by_url_from_a_local_http_server(tmp_path):
    import functools
    import http.server
    import threading

    src = repo_root() / "data" / "sample" / json.loads(SAMPLE_DEV.read_text(encoding="utf-8").splitlines()[0])["url"]
    (tmp_path / "ok.jpg").write_bytes(src.read_bytes())
    (tmp_path / "page.html").write_text("<html>not an image</html>", encoding="utf-8")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        urls = [f"{base}/ok.jpg", f"{base}/absent.jpg", f"{base}/page.html", f"file://{tmp_path / 'ok.jpg'}"]
        manifest = tmp_path / "urls.jsonl"
        manifest.write_text("\n".join(json.dumps({"image": u, "captions": [f"c{i}"]}) for i, u in enumerate(urls)), encoding="utf-8")
        data = ds.load_retrieval(manifest)
        check = check_images(data.images, skip_missing=True)
    finally:
        server.shutdown()
    assert check.ok == [0, 3]
    reasons = dict(check.failed)
    assert "404" in reasons[f"{base}/absent.jpg"] and "not a readable image" in reasons[f"{base}/page.html"]


def test_rows_without_text_are_counted_for_multilingual_sets_and_text_pairs(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"image": "a.jpg", "en": ["a dog"], "zh": ["一只狗"]},
        {"image": "b.jpg", "en": [" "]},
        {"image": "c.jpg", "zh": ["一只猫"]},
    ]), encoding="utf-8")
    multi = ds.load_multilingual(manifest)
    assert multi.images == [str(tmp_path / "a.jpg"), str(tmp_path / "c.jpg")] and multi.skipped_rows == 1
    assert multi.languages == {"en": (["a dog"], [0]), "zh": (["一只狗", "一只猫"], [0, 1])}

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(r) for r in [
        {"q": "one", "t": "uno"}, {"q": "two"}, {"q": " ", "t": "tres"}, {"q": "four", "t": "cuatro"},
    ]), encoding="utf-8")
    loaded = ds.load_text_pairs(pairs, "q", "t")
    assert loaded.queries == ["one", "four"] and loaded.skipped_rows == 2
