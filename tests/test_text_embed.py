"""``flame embed`` / run_embedding: store layout, bad input, resumption (real SmolLM2)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flame.app.cli import main as cli_main
from flame.config import load_config, repo_root
from flame.errors import FlameError
from flame.digest import sha256_file
from flame.text.embed import run_embedding
from flame.text.encoder import TextEncoder
from flame.text.llm import load_llm
from flame.text.store import EmbeddingStore
from tests.fixtures.text import text_config

SAMPLE = repo_root() / "data" / "sample" / "train.jsonl"


def _sample_rows(n: int) -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()[:n]]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_tar(path: Path, samples: list[tuple[str, dict]], raw_txt: dict[str, bytes] | None = None) -> Path:
    """An img2dataset-style shard: ``<key>.txt`` (first caption) and ``<key>.json`` members."""
    with tarfile.open(path, "w") as tar:
        for key, meta in samples:
            txt = (raw_txt or {}).get(key, (meta.get("caption") or "").encode("utf-8"))
            for name, data in ((f"{key}.txt", txt), (f"{key}.json", json.dumps(meta).encode("utf-8"))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _shard_dir(root: Path, shards: int, per_shard: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = _sample_rows(shards * per_shard)
    for s in range(shards):
        chunk = rows[s * per_shard:(s + 1) * per_shard]
        # one caption each: the tiny profile cycles it, so each sample costs one prompt per facet
        _write_tar(root / f"{s:05d}.tar", [(f"{s:05d}{i:04d}", {"caption": r["caption"]}) for i, r in enumerate(chunk)])
    return root


@pytest.mark.slow
def test_store_made_in_one_dtype_is_used_where_another_is_chosen(tmp_path, tiny_encoder, tiny_encoder_fp32):
    manifest = _write_jsonl(tmp_path / "part.jsonl", _sample_rows(2))
    bf16 = text_config(dtype="bfloat16")
    loaded = load_llm(bf16.llm, dtype="bfloat16")
    made = run_embedding(bf16, manifest, tmp_path / "emb", encoder=TextEncoder(bf16, loaded), progress=False)
    fp32 = run_embedding(text_config(dtype="float32"), manifest, tmp_path / "emb", encoder=tiny_encoder_fp32, progress=False)
    assert fp32["store"] == made["store"] and fp32["shards_skipped"] == 1 and fp32["shards_done"] == 0
    store = EmbeddingStore.open(made["store"])
    assert store.meta["compute_dtype"] == "bfloat16" and store.stats("part")["compute_dtype"] == "bfloat16"


@pytest.mark.slow
def test_jsonl_store_layout_skips_empty_and_cycles(tmp_path, tiny_encoder, caplog):
    rows = _sample_rows(2)
    rows[1] = {"caption": "A brown dog runs along the beach."}  # one caption only: cycled
    rows.append({"caption": "   ", "captions": ["", " \t "]})  # nothing to embed: skipped
    rows.append({"key": "custom-key", "captions": ["", "Zwei Hunde spielen im Schnee."]})
    manifest = _write_jsonl(tmp_path / "part.jsonl", rows)
    config = text_config(captions_per_sample=2, views=[  # K = 2 x raw(1) + 2 x short(3) = 8
        {"field": "caption", "facet_set": "raw"}, {"field": "caption", "facet_set": "short"}])

    with caplog.at_level(logging.WARNING, logger="flame.text.embed"):
        summary = run_embedding(config, manifest, tmp_path / "emb", encoder=tiny_encoder, progress=False)

    # every kind of skip is said once, with its count
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "skipped 1 sample(s) with no non-empty caption in field(s) ['caption'] (e.g. part/000000002)",
        "ignored 3 empty caption(s) (nothing but whitespace)",
    ]
    store = EmbeddingStore.open(tmp_path / "emb")
    assert summary["validation"]["ok"] and store.shards() == ["part"]
    assert (store.K, store.D) == (8, 576)
    keys, emb = store.read("part")
    assert keys == ["000000000", "000000001", "custom-key"]
    stats = store.stats("part")
    assert stats["samples_in"] == 4 and stats["samples"] == 3 and stats["skipped_empty"] == 1
    assert stats["skipped_keys"] == ["000000002"] and stats["empty_captions"] == 3
    assert summary["skipped_empty"] == 1
    layout = store.meta["layout"]
    assert [c["facet_set"] for c in layout] == ["raw", "raw"] + ["short"] * 6
    assert [(c["caption_index"], c["facet_index"]) for c in layout[2:5]] == [(0, 0), (0, 1), (0, 2)]
    assert store.meta["fingerprint_inputs"]["captions_per_sample"] == 2
    # the compute dtype is recorded, not fingerprinted
    assert store.meta["compute_dtype"] == stats["compute_dtype"] == tiny_encoder.dtype_name
    assert "dtype" not in store.meta["fingerprint_inputs"]
    # the embeddings are normalised, and a cycled caption repeats its columns exactly
    assert torch.allclose(emb.float().norm(dim=-1), torch.ones(3, 8), atol=1e-2)
    assert torch.equal(emb[1, 0], emb[1, 1]) and torch.equal(emb[1, 2:5], emb[1, 5:8])
    assert not torch.equal(emb[0, 0], emb[0, 1])  # two different captions
    # the stored vector is the encoder's, normalised
    direct = torch.nn.functional.normalize(tiny_encoder.encode(["A brown dog runs along the beach"], "short")[0], dim=-1)
    assert torch.nn.functional.cosine_similarity(direct, emb[1, 2:5].float(), dim=-1).min() > 0.995


@pytest.mark.slow
def test_multilingual_fields(tmp_path, tiny_encoder):
    rows = _sample_rows(2)
    manifest = _write_jsonl(tmp_path / "ml.jsonl", rows)
    config = text_config(captions_per_sample=1, views=[
        {"field": "zh", "facet_set": "raw"}, {"field": "ar", "facet_set": "raw"},
        {"field": "m30k_task1_de", "facet_set": "raw"},
    ])
    summary = run_embedding(config, manifest, tmp_path / "emb", encoder=tiny_encoder, progress=False)
    keys, emb = EmbeddingStore.open(summary["store"]).read("ml")
    assert keys == ["000000000", "000000001"] and emb.shape == (2, 3, 576)
    assert torch.isfinite(emb).all() and not torch.equal(emb[0, 0], emb[0, 1])


@pytest.mark.slow
def test_resume_after_partial_run_matches_uninterrupted(tmp_path, tiny_encoder):
    shards = _shard_dir(tmp_path / "shards", shards=3, per_shard=2)
    config = text_config(captions_per_sample=1, views=[{"field": "caption", "facet_set": "raw"}])

    first = run_embedding(config, shards, tmp_path / "resumed", encoder=tiny_encoder, max_shards=1, progress=False)
    assert first["shards_done"] == 1 and first["shards_remaining"] == 2
    second = run_embedding(config, shards, tmp_path / "resumed", encoder=tiny_encoder, progress=False)
    assert (second["shards_skipped"], second["shards_done"], second["shards_remaining"]) == (1, 2, 0)
    assert second["validation"]["ok"] and second["validation"]["samples"] == 6

    full = run_embedding(config, shards, tmp_path / "full", encoder=tiny_encoder, progress=False)
    assert full["fingerprint"] == second["fingerprint"]
    resumed, uninterrupted = EmbeddingStore.open(second["store"]), EmbeddingStore.open(full["store"])
    assert resumed.shards() == uninterrupted.shards() == ["00000", "00001", "00002"]
    for shard in resumed.shards():
        # safetensors orders header metadata arbitrarily, so compare contents, not bytes
        (ka, a), (kb, b) = resumed.read(shard), uninterrupted.read(shard)
        assert ka == kb and torch.equal(a, b) and resumed.stats(shard) == uninterrupted.stats(shard), shard


@pytest.mark.slow
def test_processes_split_shards_by_rank(tmp_path, tiny_encoder):
    shards = _shard_dir(tmp_path / "shards", shards=3, per_shard=1)
    config = text_config(captions_per_sample=1, views=[{"field": "caption", "facet_set": "raw"}])
    runs = [run_embedding(config, shards, tmp_path / "emb", encoder=tiny_encoder, progress=False,
                          rank=rank, world_size=2) for rank in (0, 1)]
    assert [r["shards_done"] for r in runs] == [2, 1]  # 00000, 00002 | 00001
    assert EmbeddingStore.open(tmp_path / "emb").validate()["samples"] == 3
    with pytest.raises(FlameError, match="rank 2 is not in 0..1"):
        run_embedding(config, shards, tmp_path / "emb", encoder=tiny_encoder, rank=2, world_size=2)


@pytest.mark.slow
def test_killed_cli_run_resumes_with_identical_results(tmp_path, tiny_encoder):
    # later shards are bigger, so the kill lands while they are being computed
    shards = tmp_path / "shards"
    shards.mkdir()
    rows = _sample_rows(7)
    sizes = [1, 3, 3]
    start = 0
    for s, size in enumerate(sizes):
        chunk = rows[start:start + size]
        start += size
        _write_tar(shards / f"{s:05d}.tar", [(f"{s:05d}{i:04d}", {"caption": r["caption"]}) for i, r in enumerate(chunk)])
    out = tmp_path / "emb"
    cmd = [sys.executable, "-m", "flame", "embed", "--input", str(shards), "--out", str(out), "--no-progress"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, cwd=repo_root(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list(out.glob("*/*.safetensors")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    present = {p.stem for p in out.glob("*/*.safetensors")}
    assert present and not list(out.glob("*/.*.tmp"))  # at least one shard, never a half-written one

    rerun = subprocess.run(cmd, cwd=repo_root(), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["shards_skipped"] == len(present) and summary["shards_done"] == 3 - len(present)
    assert summary["validation"]["ok"] and summary["validation"]["samples"] == 7

    reference = run_embedding(load_config(profile="tiny"), shards, tmp_path / "ref", encoder=tiny_encoder, progress=False)
    assert reference["fingerprint"] == summary["fingerprint"]
    resumed = EmbeddingStore.open(out)
    ref = EmbeddingStore.open(tmp_path / "ref")
    for shard in ref.shards():
        (ka, a), (kb, b) = resumed.read(shard), ref.read(shard)
        assert ka == kb and torch.equal(a, b), shard


def test_non_utf8_jsonl_fails_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"caption": "caf\u00e9"}\n'.encode("latin-1"))
    code = cli_main(["embed", "--input", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "latin1.jsonl:1: not UTF-8" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # failed before loading the LLM or creating the store


@pytest.mark.slow
def test_non_utf8_shard_member_and_bad_json_name_the_file(tmp_path, tiny_encoder):
    config = text_config(captions_per_sample=1, views=[{"field": "caption", "facet_set": "raw"}])
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_tar(shards / "00000.tar", [("k1", {})], raw_txt={"k1": "caf\u00e9".encode("latin-1")})
    with pytest.raises(FlameError, match=r"00000\.tar:k1\.txt: not UTF-8"):
        run_embedding(config, shards, tmp_path / "o1", encoder=tiny_encoder, progress=False)
    assert EmbeddingStore.open(tmp_path / "o1").shards() == []  # nothing half-written

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"caption": "A cat."}\n{"caption": oops}\n', encoding="utf-8")
    with pytest.raises(FlameError, match=r"broken\.jsonl:2: invalid JSON"):
        run_embedding(config, broken, tmp_path / "o2", encoder=tiny_encoder, progress=False)


def test_missing_input_and_help():
    with pytest.raises(FlameError, match="embedding input not found"):
        run_embedding(text_config(), "/nonexistent/input.jsonl", "/tmp/unused-out")
    helptext = subprocess.run([sys.executable, "-m", "flame", "embed", "--help"], cwd=repo_root(),
                              capture_output=True, text=True, timeout=120).stdout
    for option in ("--input", "--out", "--max-shards", "--batch-size", "--profile", "--config"):
        assert option in helptext


@pytest.mark.slow
def test_manifest_caption_column(tmp_path, tiny_encoder):
    manifest = _write_jsonl(tmp_path / "en.jsonl", [{"image": "a.jpg", "en": ["A cat.", "A grey cat."]}])
    config = text_config(captions_per_sample=1, views=[{"field": "caption", "facet_set": "raw"}])
    with pytest.raises(FlameError, match=r"en\.jsonl: no sample has the caption field\(s\) \['caption'\].*--caption-col"):
        run_embedding(config, manifest, tmp_path / "o", encoder=tiny_encoder, progress=False)
    summary = run_embedding(config, manifest, tmp_path / "o", encoder=tiny_encoder, progress=False, caption_col="en")
    assert summary["samples"] == 1 and summary["validation"]["ok"]


def _store_files(store: EmbeddingStore) -> dict[str, tuple[bytes, int]]:
    """Every file of the store folder (meta.json, shard files) with its bytes and mtime."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(store.path.iterdir())}


@pytest.mark.slow
def test_a_shard_replaced_with_new_captions_is_re_embedded_and_the_rest_untouched(tmp_path, tiny_encoder, caplog):
    shards = _shard_dir(tmp_path / "shards", shards=2, per_shard=2)
    config = text_config(captions_per_sample=1, views=[{"field": "caption", "facet_set": "raw"}])
    first = run_embedding(config, shards, tmp_path / "emb", encoder=tiny_encoder, progress=False)
    store = EmbeddingStore.open(first["store"])
    before = _store_files(store)

    unchanged = run_embedding(config, shards, tmp_path / "emb", encoder=tiny_encoder, progress=False)
    assert (unchanged["shards_skipped"], unchanged["shards_done"]) == (2, 0)
    assert _store_files(store) == before  # same bytes, same mtime: nothing rewritten

    old_keys, old = store.read("00001")
    new_rows = _sample_rows(8)[4:6]  # other images' captions under the same keys
    _write_tar(shards / "00001.tar", [(k, {"caption": r["caption"]}) for k, r in zip(old_keys, new_rows)])
    with caplog.at_level(logging.WARNING, logger="flame.text.embed"):
        rerun = run_embedding(config, shards, tmp_path / "emb", encoder=tiny_encoder, progress=False)
    assert (rerun["shards_skipped"], rerun["shards_done"], rerun["shards_remaining"]) == (1, 1, 0)
    assert (unchanged["shards_stale"], rerun["shards_stale"]) == (0, 1)
    changed = [r.getMessage() for r in caplog.records if "changed since" in r.getMessage()]
    assert changed == ["1 shard(s) changed since they were embedded: 00001; re-embedding"]
    after = _store_files(store)
    assert after["00000.safetensors"] == before["00000.safetensors"]
    keys, new = store.read("00001")
    assert keys == old_keys and not torch.equal(new, old)
    assert store.input_digest("00001") == sha256_file(shards / "00001.tar")
    fresh = run_embedding(config, shards, tmp_path / "fresh", encoder=tiny_encoder, progress=False)
    assert torch.equal(EmbeddingStore.open(fresh["store"]).read("00001")[1], new)


@pytest.mark.slow
def test_a_manifest_rewritten_under_its_name_or_a_file_without_a_digest_is_re_embedded(tmp_path, tiny_encoder):
    config = text_config(captions_per_sample=1, views=[{"field": "caption", "facet_set": "raw"}])
    manifest = _write_jsonl(tmp_path / "part.jsonl", _sample_rows(2))
    first = run_embedding(config, manifest, tmp_path / "emb", encoder=tiny_encoder, progress=False)
    store = EmbeddingStore.open(first["store"])
    _, old = store.read("part")

    _write_jsonl(manifest, _sample_rows(4)[2:])
    rerun = run_embedding(config, manifest, tmp_path / "emb", encoder=tiny_encoder, progress=False)
    assert (rerun["shards_done"], rerun["shards_skipped"], rerun.get("shards_stale")) == (1, 0, 1)
    _, new = store.read("part")
    fresh = run_embedding(config, manifest, tmp_path / "fresh", encoder=tiny_encoder, progress=False)
    assert not torch.equal(new, old) and torch.equal(EmbeddingStore.open(fresh["store"]).read("part")[1], new)

    # a shard file that records no input digest (an older store) cannot be trusted: recomputed
    keys, emb = store.read("part")
    save_file({"embeddings": emb}, str(store.shard_path("part")), metadata={"keys": json.dumps(keys)})
    again = run_embedding(config, manifest, tmp_path / "emb", encoder=tiny_encoder, progress=False)
    assert (again["shards_stale"], again["shards_done"]) == (1, 1)
    assert store.input_digest("part") == sha256_file(manifest)


@pytest.mark.slow
def test_progress_bar_counts_distinct_captions(tmp_path, tiny_encoder, capsys):
    rows = [{"captions": r["captions"][:2]} for r in _sample_rows(3)]
    rows.append({"captions": rows[0]["captions"]})  # the same two captions again: nothing new to encode
    manifest = _write_jsonl(tmp_path / "part.jsonl", rows)
    config = text_config(captions_per_sample=2, views=[  # two facet sets read every caption
        {"field": "caption", "facet_set": "raw"}, {"field": "caption", "facet_set": "short"}])
    summary = run_embedding(config, manifest, tmp_path / "emb", encoder=tiny_encoder, progress=True)
    captions = len({c for r in rows for c in r["captions"]})
    counts = re.findall(r"(\d+)/(\d+) \[", capsys.readouterr().err)
    assert captions == 6 and counts and counts[-1] == (str(captions), str(captions))  # n == total == captions
    assert summary.get("captions") == captions
