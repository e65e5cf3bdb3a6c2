"""EmbeddingStore: per-shard safetensors files under a fingerprint folder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from flame.errors import FlameError
from flame.text.store import EmbeddingStore, fingerprint_of


def _meta(**inputs):
    inputs = inputs or {"llm": "x", "layer": -1}
    return {"fingerprint": fingerprint_of(inputs), "fingerprint_inputs": inputs, "K": 3, "D": 4,
            "layout": [{"column": i} for i in range(3)]}


def test_write_read_lookup_roundtrip(tmp_path):
    store = EmbeddingStore.create(tmp_path, _meta())
    emb = torch.nn.functional.normalize(torch.randn(2, 3, 4), dim=-1)
    store.write("00000", ["a", "b"], emb, {"samples": 2, "skipped_empty": 0}, input_digest="d1")

    reopened = EmbeddingStore.open(tmp_path)  # the root holding exactly one store
    assert reopened.path == store.path and reopened.path.name == store.fingerprint
    assert (reopened.K, reopened.D) == (3, 4)
    assert reopened.shards() == ["00000"] and reopened.has("00000") and not reopened.has("00001")
    keys, got = reopened.read("00000")
    assert keys == ["a", "b"] and got.dtype == torch.float16 and got.shape == (2, 3, 4)
    assert torch.allclose(got.float(), emb, atol=1e-3)
    assert reopened.lookup("00000") == {"a": 0, "b": 1}
    assert reopened.stats("00000")["samples"] == 2
    assert reopened.input_digest("00000") == "d1"  # what the embeddings were computed from
    assert json.loads((store.path / "meta.json").read_text())["layout"][2] == {"column": 2}
    # nothing but the shard and meta.json: the temp file of the atomic write is gone
    assert sorted(p.name for p in store.path.iterdir()) == ["00000.safetensors", "meta.json"]
    report = reopened.validate()
    assert report["ok"] and report["samples"] == 2 and report["shards"] == 1 and report["bytes"] > 0


def test_empty_shard_is_valid(tmp_path):
    store = EmbeddingStore.create(tmp_path, _meta())
    store.write("00003", [], torch.zeros(0, 3, 4), {"samples": 0, "skipped_empty": 4}, input_digest="d3")
    keys, emb = store.read("00003")
    assert keys == [] and emb.shape == (0, 3, 4)
    assert store.validate()["ok"]


def test_write_rejects_bad_shapes_and_keys(tmp_path):
    store = EmbeddingStore.create(tmp_path, _meta())
    with pytest.raises(ValueError, match=r"expected \[n, 3, 4\]"):
        store.write("00000", ["a"], torch.zeros(1, 2, 4), input_digest="d")
    with pytest.raises(ValueError, match="2 keys for 1 rows"):
        store.write("00000", ["a", "b"], torch.zeros(1, 3, 4), input_digest="d")
    with pytest.raises(ValueError, match="duplicate"):
        store.write("00000", ["a", "a"], torch.zeros(2, 3, 4), input_digest="d")
    with pytest.raises(ValueError, match="digest of its input is required"):
        store.write("00000", ["a"], torch.zeros(1, 3, 4), input_digest="")
    assert store.shards() == []


def test_a_shard_file_without_a_recorded_digest_reads_as_none(tmp_path):
    store = EmbeddingStore.create(tmp_path, _meta())
    save_file({"embeddings": torch.zeros(1, 3, 4, dtype=torch.float16)}, str(store.shard_path("00000")),
              metadata={"keys": '["a"]'})
    assert store.has("00000") and store.input_digest("00000") is None


def test_stale_names_the_shards_embedded_from_other_inputs(tmp_path):
    store = EmbeddingStore.create(tmp_path, _meta())
    for name, digest in (("00000", "d0"), ("00001", "d1"), ("00002", "d2")):
        store.write(name, ["a"], torch.zeros(1, 3, 4), input_digest=digest)
    save_file({"embeddings": torch.zeros(1, 3, 4, dtype=torch.float16)}, str(store.shard_path("00003")),
              metadata={"keys": '["a"]'})  # written before inputs were recorded
    now = {"00000": "d0", "00001": "changed", "00003": "d3", "00004": "not embedded yet"}
    # 00002 is not part of the data given: it is not judged
    assert store.stale(now) == {"00001": "d1", "00003": None}
    assert store.stale({"00000": "d0", "00002": "d2"}) == {}


def test_validate_reports_non_finite_and_count_mismatch(tmp_path):
    store = EmbeddingStore.create(tmp_path, _meta())
    bad = torch.zeros(2, 3, 4, dtype=torch.float16)
    bad[1, 0, 0] = float("nan")
    save_file({"embeddings": bad}, str(store.shard_path("00000")), metadata={"keys": '["a", "b"]'})
    save_file({"embeddings": torch.zeros(2, 3, 4, dtype=torch.float16)}, str(store.shard_path("00001")),
              metadata={"keys": '["a"]'})
    store.shard_path("00002").write_bytes(b"not safetensors")
    report = store.validate()
    assert not report["ok"]
    text = "\n".join(report["errors"])
    assert "00000: non-finite" in text and "00001: 2 rows but 1 keys" in text and "00002: unreadable" in text


def test_open_errors_name_the_problem(tmp_path):
    with pytest.raises(FlameError, match="not found"):
        EmbeddingStore.open(tmp_path / "missing")
    with pytest.raises(FlameError, match="no embedding store"):
        EmbeddingStore.open(tmp_path)
    EmbeddingStore.create(tmp_path, _meta(llm="a"))
    EmbeddingStore.create(tmp_path, _meta(llm="b"))
    with pytest.raises(FlameError, match="holds 2 embedding stores"):
        EmbeddingStore.open(tmp_path)


def test_create_refuses_to_mix_with_a_different_store(tmp_path):
    meta = _meta()
    EmbeddingStore.create(tmp_path, meta)
    assert EmbeddingStore.create(tmp_path, meta).K == 3  # same inputs: reopened
    changed = dict(meta, D=8)
    with pytest.raises(FlameError, match="differs in 'D'"):
        EmbeddingStore.create(tmp_path, changed)


def test_fingerprint_is_stable_and_sensitive():
    a = fingerprint_of({"llm": "m", "layer": 3, "templates": {"raw": "x"}})
    assert a == fingerprint_of({"templates": {"raw": "x"}, "layer": 3, "llm": "m"})
    assert a != fingerprint_of({"llm": "m", "layer": 4, "templates": {"raw": "x"}})
    assert len(a) == 16
