"""DVC: the real dvc.yaml in a temporary git repository (dvc repro, push to a local
remote, pull into a fresh clone), stage parameters that follow the selected profile and its
``extends:`` chain, the committed dvc.lock, and orchestration.versioning against a real DVC repo."""

import filecmp
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from flame.app.cli import build_parser
from flame.config import FlameConfig, load_config, profile_names
from orchestration.versioning import data_hashes, ensure_remote, record_and_tag, record_data, run_dvc, version_tags

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)
# Written by the `config` stage: the selected profile as flame resolves it; the stages' params.
RESOLVED = "params.resolved.yaml"
# What `dvc repro` on the sample pipeline leaves for git (beside dvc.yaml and params.yaml).
PIPELINE_FILES = ("dvc.yaml", "dvc.lock", "params.yaml", RESOLVED)
PIPELINE_OUTS = ("data/pipeline/shards", "data/pipeline/embeddings", "outputs/pipeline/model", "outputs/pipeline/eval")


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                   env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                            GIT_COMMITTER_EMAIL="t@t"))


def _dvc(repo, *args):
    return run_dvc(repo, *args)


def _changes(repo, *targets):
    """`dvc status --json` as {stage: [what changed]}: "changed command", a parameter as
    "FILE:KEY STATE", a dependency or output as "PATH STATE". Data absent from the
    repository (a deleted or uncached dependency or output) is left out: what is compared is
    the record (dvc.lock) against dvc.yaml, params and the files present."""
    report = json.loads(run_dvc(repo, "status", "--json", *targets) or "{}")
    changes = {}
    for stage, entries in report.items():
        found = []
        for entry in entries:
            if isinstance(entry, str):
                found.append(entry)
                continue
            for items in entry.values():
                for path, state in items.items():
                    if isinstance(state, dict):
                        found += [f"{path}:{key} {what}" for key, what in state.items()]
                    elif state not in ("deleted", "not in cache"):
                        found.append(f"{path} {state}")
        if found:
            changes[stage] = sorted(found)
    return changes


def _edit_params(repo, edit):
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


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


@pytest.fixture
def pipeline_copy(tmp_path, monkeypatch):
    """A fresh git + DVC repository holding what git holds of the sample pipeline: dvc.yaml,
    dvc.lock, params.yaml, params.resolved.yaml and data/sample (none of the pipeline's data)."""
    repo = tmp_path / "copy"
    repo.mkdir()
    for name in PIPELINE_FILES:
        shutil.copy2(ROOT / name, repo / name)
    shutil.copytree(ROOT / "data/sample", repo / "data/sample")
    monkeypatch.setenv("PATH", VENV_BIN + os.pathsep + os.environ["PATH"])
    _git(repo, "init", "-q")
    _dvc(repo, "init", "-q")
    _dvc(repo, "config", "core.analytics", "false")
    return repo


def test_dvc_yaml_stages_call_the_flame_cli_with_params_from_params_yaml():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert list(stages) == ["config", "download", "embed", "train", "evaluate"]
    # `config` reads every profile and writes the selected one, resolved, for the others.
    config = stages["config"]
    assert config["deps"] == ["params.yaml"] and "params" not in config and "${profile}" in config["cmd"]
    assert config["outs"] == [{RESOLVED: {"cache": False}}]
    sections = set(FlameConfig.model_fields) - {"profile"}
    parser = build_parser()
    for name, stage in list(stages.items())[1:]:
        argv = shlex.split(stage["cmd"].replace("${profile}", params["profile"]))
        assert argv[:2] == ["flame", name]
        assert parser.parse_args(argv[1:]).profile == params["profile"]
        # Only sections of the resolved profile: none of params.yaml, so no stage tracks a
        # profile other than the selected one, nor misses what the selected one inherits.
        [entry] = stage["params"]
        assert list(entry) == [RESOLVED] and entry[RESOLVED] and set(entry[RESOLVED]) <= sections, name
    for name in profile_names(ROOT / "params.yaml"):  # every section is there whatever the profile
        assert sections <= set(load_config(ROOT / "params.yaml", name).model_dump(mode="json")), name
    previous_outs = {RESOLVED}
    for stage in list(stages.values())[1:]:
        assert set(stage["deps"]) & previous_outs or stage is stages["download"]
        previous_outs |= set(stage["outs"])
    assert {"data/sample/dev.jsonl", "data/sample/images"} <= set(stages["evaluate"]["deps"])


def test_dvc_lock_records_the_sample_pipeline_of_dvc_yaml_and_params_yaml(pipeline_copy):
    """dvc.lock (committed) matches dvc.yaml, params.yaml and data/sample: in a fresh copy
    without the pipeline's data, `dvc status` finds only that data missing."""
    # `config` reruns on any edit of params.yaml (cheap); the lock must hold for what it resolves.
    _dvc(pipeline_copy, "repro", "--single-item", "config")
    stale = _changes(pipeline_copy)
    assert not stale, f"dvc.lock is stale ({stale}): run `dvc repro` (with .venv active) and commit {PIPELINE_FILES}"
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    assert list(lock) == ["config", "download", "embed", "train", "evaluate"]
    # evaluate reads the dev images (sample-dev-retrieval) as download reads the train ones.
    dev_image = json.loads((pipeline_copy / "data/sample/dev.jsonl").read_text().splitlines()[0])["url"]
    with (pipeline_copy / "data/sample" / dev_image).open("ab") as fh:
        fh.write(b"\0")
    assert _changes(pipeline_copy) == {stage: ["data/sample/images modified"] for stage in ("download", "evaluate")}
    # The outputs are git-ignored; what the pipeline leaves for git is not.
    for path in PIPELINE_OUTS:
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0, path
    for path in PIPELINE_FILES:
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 1, path


def test_stage_params_follow_the_selected_profile_and_what_it_inherits(pipeline_copy):
    repo = pipeline_copy

    def after(edit):
        """Apply ``edit`` to params.yaml: only `config` has changed until it reruns; then the
        stages that read a changed resolved value."""
        _edit_params(repo, edit)
        assert set(_changes(repo)) == {"config"}
        _dvc(repo, "repro", "--single-item", "config")
        return _changes(repo)

    # tiny, against the committed dvc.lock: train (the one reader of train.*) and nothing else.
    assert after(lambda p: p["profiles"]["tiny"]["train"].update(epochs=1)) == {
        "train": [f"{RESOLVED}:train modified"]}

    # clip (extends tiny, overriding text.mode): record a run under it...
    _edit_params(repo, lambda p: p.update(profile="clip"))
    _dvc(repo, "repro", "--single-item", "config")
    assert {stage for stage, what in _changes(repo).items() if "changed command" in what} == {
        "download", "embed", "train", "evaluate"}  # --profile clip
    for out in PIPELINE_OUTS:
        (repo / out).mkdir(parents=True)
        (repo / out / "stand-in").write_text(out)
    _dvc(repo, "commit", "--force", "--quiet")
    assert _changes(repo) == {}
    # ...then a value clip inherits from tiny reruns exactly its readers...
    assert after(lambda p: p["profiles"]["tiny"]["text"].update(max_tokens=64)) == {
        "embed": [f"{RESOLVED}:text modified"], "train": [f"{RESOLVED}:text modified"]}
    _dvc(repo, "commit", "--force", "--quiet")
    assert after(lambda p: p["profiles"]["tiny"]["train"].update(epochs=2)) == {
        "train": [f"{RESOLVED}:train modified"]}
    _dvc(repo, "commit", "--force", "--quiet")
    # ...while a value clip overrides, and another profile's, rerun nothing but `config`.
    assert after(lambda p: p["profiles"]["tiny"]["text"].update(mode="clip")) == {}
    assert after(lambda p: p["profiles"]["paper"]["train"].update(epochs=1)) == {}


@pytest.mark.slow
def test_repro_push_then_pull_into_a_fresh_clone_restores_identical_data(dvc_repo, tmp_path):
    _dvc(dvc_repo, "repro", "download")
    shards = dvc_repo / "data/pipeline/shards"
    assert sorted(p.name for p in shards.glob("*.tar")) == ["00000.tar"]
    lock = yaml.safe_load((dvc_repo / "dvc.lock").read_text())
    assert lock["stages"]["download"]["outs"][0]["md5"].endswith(".dir")
    assert _up_to_date(dvc_repo, "download")
    _dvc(dvc_repo, "push")
    _git(dvc_repo, "add", "dvc.lock", RESOLVED, "data/pipeline/.gitignore")
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
