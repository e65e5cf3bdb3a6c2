"""DVC: the real dvc.yaml in a temporary git repository (dvc repro, push to a local
remote, pull into a fresh clone), and orchestration.versioning against a real DVC repo."""

import filecmp
import json
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from flame.cli import build_parser
from orchestration.versioning import data_hashes, ensure_remote, record_and_tag, record_data, run_dvc, version_tags

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                   env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                            GIT_COMMITTER_EMAIL="t@t"))


def _dvc(repo, *args):
    return run_dvc(repo, *args)


def _up_to_date(repo, *args):
    proc = subprocess.run([str(Path(VENV_BIN) / "dvc"), "status", *args], cwd=repo, capture_output=True, text=True)
    text = (proc.stdout + proc.stderr).lower()
    return proc.returncode == 0 and ("up to date" in text or "in sync" in text)


@pytest.fixture
def dvc_repo(tmp_path, monkeypatch):
    """A git + DVC repository holding the project's dvc.yaml and params.yaml, 6 sample images
    and a local remote; ``flame`` on PATH."""
    repo = tmp_path / "repo"
    sample = repo / "data" / "sample"
    (sample / "images").mkdir(parents=True)
    rows = [json.loads(line) for line in (ROOT / "data/sample/train.jsonl").read_text().splitlines()[:6]]
    with (sample / "train.jsonl").open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
            (sample / row["url"]).write_bytes((ROOT / "data/sample" / row["url"]).read_bytes())
    for name in ("dvc.yaml", "params.yaml"):
        (repo / name).write_bytes((ROOT / name).read_bytes())
    monkeypatch.setenv("PATH", VENV_BIN + os.pathsep + os.environ["PATH"])
    _git(repo, "init", "-q")
    _dvc(repo, "init", "-q")
    _dvc(repo, "config", "core.analytics", "false")
    _dvc(repo, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "pipeline")
    return repo


def test_dvc_yaml_stages_call_the_flame_cli_with_params_from_params_yaml():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert list(stages) == ["download", "embed", "train", "evaluate"]
    parser = build_parser()
    for name, stage in stages.items():
        argv = shlex.split(stage["cmd"].replace("${profile}", params["profile"]))
        assert argv[:2] == ["flame", name]
        parser.parse_args(argv[1:])
        for key in stage["params"]:
            node = params
            for part in key.split("."):
                node = node[part]  # KeyError names a param DVC could not find
    previous_outs = set()
    for stage in stages.values():
        assert set(stage["deps"]) & previous_outs or stage is stages["download"]
        previous_outs |= set(stage["outs"])


@pytest.mark.slow
def test_repro_push_then_pull_into_a_fresh_clone_restores_identical_data(dvc_repo, tmp_path):
    _dvc(dvc_repo, "repro", "download")
    shards = dvc_repo / "data/pipeline/shards"
    assert sorted(p.name for p in shards.glob("*.tar")) == ["00000.tar"]
    lock = yaml.safe_load((dvc_repo / "dvc.lock").read_text())
    assert lock["stages"]["download"]["outs"][0]["md5"].endswith(".dir")
    assert _up_to_date(dvc_repo, "download")
    _dvc(dvc_repo, "push")
    _git(dvc_repo, "add", "dvc.lock", "data/pipeline/.gitignore")
    _git(dvc_repo, "commit", "-qm", "data")

    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(dvc_repo), str(clone))
    assert not (clone / "data/pipeline/shards").exists()
    _dvc(clone, "pull", "download")
    cmp = filecmp.dircmp(shards, clone / "data/pipeline/shards")
    assert cmp.left_list == cmp.right_list and not cmp.diff_files and cmp.left_list
    for name in cmp.common_files:
        assert (shards / name).read_bytes() == (clone / "data/pipeline/shards" / name).read_bytes()
    assert _up_to_date(clone, "download")


@pytest.mark.slow
def test_record_data_versions_and_pushes_asset_folders(dvc_repo, tmp_path):
    shards, store = dvc_repo / "data/shards", dvc_repo / "data/embeddings"
    shards.mkdir(parents=True)
    store.mkdir(parents=True)
    (shards / "a.tar").write_bytes(b"shard a")
    (store / "a.safetensors").write_bytes(b"embeddings a")

    # Two recordings at once (as two Dagster runs would): DVC's lock serialises them.
    results, errors = {}, []

    def record(path):
        try:
            results[path] = record_data(dvc_repo, [path])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(p,)) for p in ("data/shards", "data/embeddings")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    first = data_hashes(dvc_repo)
    assert results == {"data/shards": {"data/shards": first["data/shards"]},
                       "data/embeddings": {"data/embeddings": first["data/embeddings"]}}
    tags = version_tags(dvc_repo, ["data/shards", "data/embeddings"])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=dvc_repo, capture_output=True, text=True).stdout.strip()
    assert tags["git.commit"] == head and tags["dvc.data/shards"] == first["data/shards"]

    (shards / "b.tar").write_bytes(b"shard b")
    second = record_data(dvc_repo, [shards])
    assert second["data/shards"] != first["data/shards"]
    assert _up_to_date(dvc_repo, "--cloud", "data/shards.dvc")

    other = tmp_path / "other-remote"
    ensure_remote(dvc_repo, other)
    record_data(dvc_repo, [shards])
    assert any(p.is_file() for p in other.rglob("*"))
    assert "other-remote" not in (dvc_repo / ".dvc/config").read_text()  # kept in config.local
    with pytest.raises(Exception, match="outside the DVC repository"):
        record_data(dvc_repo, [tmp_path])


@pytest.mark.slow
def test_record_and_tag_versions_inside_and_lists_outside(dvc_repo, tmp_path):
    inside = dvc_repo / "data" / "manifests"
    inside.mkdir(parents=True)
    (inside / "a.jsonl").write_text("{}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tags = record_and_tag(dvc_repo, [inside, elsewhere], push=False)
    assert tags["dvc.data/manifests"] == data_hashes(dvc_repo)["data/manifests"]
    assert tags["dvc.unversioned"] == str(elsewhere) and len(tags["git.commit"]) == 40
    plain = tmp_path / "plain"
    plain.mkdir()
    tags = record_and_tag(plain, [plain])  # not a git or DVC repository: nothing versioned, nothing fails
    assert tags["git.commit"] == "unknown" and tags["dvc.unversioned"] == str(plain)
