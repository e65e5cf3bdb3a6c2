"""benchmarks/kill_soak.py: a small soak of ``flame download`` recovers every trial, and the
comparisons it counts with do see a lost, duplicated or changed sample or step."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch
from safetensors.torch import save_file

from benchmarks import kill_soak as ks
from flame.config import repo_root


@pytest.mark.slow
def test_download_soak_recovers_every_kill(tmp_path):
    out = tmp_path / "kill_soak.json"
    result = subprocess.run(
        [sys.executable, str(repo_root() / "benchmarks" / "kill_soak.py"), "--steps", "download", "--trials", "2",
         "--images", "8", "--per-shard", "2", "--seed", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert {k: summary[k] for k in ("trials", "recovered", "lost", "duplicated", "mismatched")} == {
        "trials": 2, "recovered": 2, "lost": 0, "duplicated": 0, "mismatched": 0}, summary["failures"]
    assert list(summary["per_step"]) == ["download"] and summary["per_step"]["download"]["trials"] == 2
    assert json.loads(out.read_text()) == summary
    assert "[download 2]" in result.stderr


def _rewrite_tar(path, change):
    """Rewrite a tar with ``change(name, data) -> data`` applied to each member."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            data = change(member.name, data)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


@pytest.mark.slow
def test_download_comparison_sees_lost_duplicated_and_changed_samples(sample_shards, tmp_path):
    ref = ks.download_outputs(sample_shards)
    assert len(ref["samples"]) == 64
    same = ks.compare_download(ref, ks.download_outputs(sample_shards))
    assert (same["lost"], same["duplicated"], same["mismatched"], same["leftovers"]) == (0, 0, 0, [])

    got = shutil.copytree(sample_shards, tmp_path / "got")
    (got / "00001_stats.json").unlink()  # shard 1 incomplete: its 32 samples are lost
    diff = ks.compare_download(ref, ks.download_outputs(got))
    assert (diff["lost"], diff["duplicated"], diff["mismatched"]) == (32, 0, 0)
    for suffix in (".tar", ".parquet", "_stats.json"):  # shard 1 now a second copy of shard 0
        shutil.copy(got / f"00000{suffix}", got / f"00001{suffix}")
    diff = ks.compare_download(ref, ks.download_outputs(got))
    assert (diff["lost"], diff["duplicated"], diff["mismatched"]) == (32, 32, 32)  # 32 also in another shard

    changed = shutil.copytree(sample_shards, tmp_path / "changed")
    first_txt = min(n for n in ref["samples"]) + ".txt"
    _rewrite_tar(changed / "00000.tar", lambda name, data: b"another caption" if name == first_txt else data)
    diff = ks.compare_download(ref, ks.download_outputs(changed))
    assert (diff["lost"], diff["duplicated"], diff["mismatched"]) == (0, 0, 1)


def _store(root, rows: dict[str, torch.Tensor]):
    folder = root / "fp"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text("{}")
    for shard, keys in (("00000", ["a", "b"]), ("00001", ["c"])):
        save_file({"embeddings": torch.stack([rows[k] for k in keys])}, str(folder / f"{shard}.safetensors"),
                  metadata={"keys": json.dumps(keys)})
    return root


def test_embed_comparison_sees_changed_rows_beyond_the_tolerance(tmp_path):
    rows = {k: torch.randn(3, 4) for k in "abc"}
    ref = ks.embed_outputs(_store(tmp_path / "ref", rows))
    changed = {**rows, "b": rows["b"] + 0.01, "c": rows["c"] + 1e-5}
    diff = ks.compare_embed(ref, ks.embed_outputs(_store(tmp_path / "got", changed)), atol=1e-3)
    assert (diff["lost"], diff["duplicated"], diff["mismatched"]) == (0, 0, 1)
    assert diff["max_abs_diff"] == pytest.approx(0.01, rel=1e-3) and diff["examples"]["mismatched"] == ["b"]


def _checkpoint(folder, weight: torch.Tensor, steps: int):
    folder.mkdir(parents=True)
    save_file({"w": weight}, str(folder / "model.safetensors"))
    (folder / "train_summary.json").write_text(json.dumps({"steps": steps, "epochs": 2, "losses": [1.0, 0.5]}))
    (folder / "model_config.json").write_text(json.dumps({"trained_steps": steps}))
    return folder


def test_train_comparison_sees_other_weights_and_step_counts(tmp_path):
    weight = torch.randn(4, 4)
    ref = ks.train_outputs(_checkpoint(tmp_path / "ref", weight, 8))
    same = ks.compare_train(ref, ks.train_outputs(_checkpoint(tmp_path / "same", weight.clone(), 8)))
    assert (same["lost"], same["duplicated"], same["mismatched"], same["max_abs_diff"]) == (0, 0, 0, 0.0)
    other = ks.compare_train(ref, ks.train_outputs(_checkpoint(tmp_path / "other", weight + 1e-4, 10)))
    assert (other["lost"], other["duplicated"], other["mismatched"]) == (0, 2, 1)
    killed = _checkpoint(tmp_path / "killed", weight, 6)
    (killed / "train_summary.json").unlink()
    assert ks.compare_train(ref, ks.train_outputs(killed))["lost"] == 2
