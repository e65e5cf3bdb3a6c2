"""DVC: dvc.yaml's stages are the pipeline's steps over the storage layout; their parameters follow
the selected profile and what it inherits; ``dvc repro`` runs the whole pipeline to a registered
model whose version names its data; ``orchestration.versioning`` records the stages a Dagster run
made, tags lineage, and pulls data by hash on another clone — all against real DVC repositories."""

import filecmp
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flame.config import FlameConfig, load_config, profile_names, resolved_yaml
from flame.storage import StoragePaths
from orchestration.dvc_stages import STAGES
from orchestration.versioning import (
    lineage_tags,
    locked_hashes,
    outputs_of,
    pull,
    record_and_tag,
    record_stages,
    run_dvc,
    why_unversioned,
)
from tests.fixtures.clone import clone_env, dvc_status, git, make_clone, only_pointer_files, status_lines
from tests.fixtures.orchestration import TEST_PROFILE, write_params, write_slice

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)
RESOLVED = "params.resolved.yaml"
UP_TO_DATE = "Data and pipelines are up to date."


def _changes(repo, *targets):
    """`dvc status --json` as {stage: [what changed]}: "changed command", a parameter as
    "FILE:KEY STATE", a dependency or output as "PATH STATE"."""
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
                    else:
                        found.append(f"{path} {state}")
        if found:
            changes[stage] = sorted(found)
    return changes


def _edit_params(repo, edit):
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def pipeline_copy(tmp_path, monkeypatch):
    """A fresh git + DVC repository holding dvc.yaml, params.yaml, params.resolved.yaml and
    data/sample; ``flame`` on PATH."""
    repo = tmp_path / "copy"
    (repo / "data" / "incoming").mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", RESOLVED, ".gitignore"):
        (repo / name).write_bytes((ROOT / name).read_bytes())
    for path in (ROOT / "data" / "sample").rglob("*"):
        if path.is_file():
            (repo / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            (repo / path.relative_to(ROOT)).write_bytes(path.read_bytes())
    monkeypatch.setenv("PATH", VENV_BIN + os.pathsep + os.environ["PATH"])
    git(repo, "init", "-q")
    run_dvc(repo, "init", "-q")
    run_dvc(repo, "config", "core.analytics", "false")
    run_dvc(repo, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pipeline")
    return repo


def _stand_ins(repo, stages):
    """A file in every output of ``stages``, as if they had run."""
    for out in outputs_of(repo, stages):
        if out != RESOLVED:
            (repo / out).mkdir(parents=True, exist_ok=True)
            (repo / out / "stand-in").write_text(out)


def test_dvc_yaml_stages_are_the_pipelines_steps_over_the_storage_layout():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert list(stages) == ["config", *STAGES]
    config = stages["config"]
    assert config["deps"] == ["params.yaml"] and "params" not in config and "${profile}" in config["cmd"]
    assert config["outs"] == [{RESOLVED: {"cache": False}}]
    sections = set(FlameConfig.model_fields) - {"profile"}
    layout = StoragePaths(Path("data"))
    folders = {str(getattr(layout, name)) for name in ("shards", "embeddings", "training_sets", "models", "evaluations")}
    for name in STAGES:
        stage = stages[name]
        assert shlex.split(stage["cmd"]) == ["python", "-m", "orchestration.dvc_stages", name, "--profile", "${profile}"]
        # Only sections of the resolved profile: none of params.yaml, so no stage tracks a
        # profile other than the selected one, nor misses what the selected one inherits.
        [entry] = stage["params"]
        assert list(entry) == [RESOLVED] and {key.split(".")[0] for key in entry[RESOLVED]} <= sections, name
        for out in stage.get("outs", []):
            assert next(iter(out)) in folders and out[next(iter(out))]["persist"], (name, out)
    for name in profile_names(ROOT / "params.yaml"):  # every section is there whatever the profile
        assert sections <= set(load_config(ROOT / "params.yaml", name).model_dump(mode="json")), name
    produced = set()
    for name in STAGES:  # each stage reads what an earlier one made, or the manifests
        deps = set(stages[name]["deps"])
        assert deps & produced or name == "shards", name
        produced |= {next(iter(o)) for o in stages[name].get("outs", [])}
    assert {"data/sample", "data/incoming"} <= set(stages["shards"]["deps"])
    assert params["profile"] == "tiny"


def test_params_resolved_is_what_flame_config_writes_for_the_default_profile():
    profile = yaml.safe_load((ROOT / "params.yaml").read_text())["profile"]
    assert (ROOT / RESOLVED).read_text() == resolved_yaml(ROOT / "params.yaml", profile), (
        f"{RESOLVED} is stale: run `flame config --profile {profile} --out {RESOLVED}` and commit it")
    for path in ("data/shards/x.tar", "data/embeddings/f/x.safetensors", "data/training_sets/i/shards/x.tar",
                 "data/models/i/model.safetensors", "data/evaluations/i/evaluation.json", "data/incoming/new.jsonl"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0, path
    for path in ("dvc.yaml", "params.yaml", RESOLVED, "dvc.lock"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 1, path


def test_stage_params_follow_the_selected_profile_and_what_it_inherits(pipeline_copy):
    repo = pipeline_copy
    _stand_ins(repo, STAGES)
    run_dvc(repo, "commit", "--force", "--quiet")
    assert _changes(repo) == {}

    def after(edit):
        """Apply ``edit`` to params.yaml: only `config` has changed until it reruns; then the
        stages that read a changed resolved value."""
        _edit_params(repo, edit)
        assert set(_changes(repo)) == {"config"}
        run_dvc(repo, "repro", "--single-item", "config")
        changed = _changes(repo)
        run_dvc(repo, "commit", "--force", "--quiet")
        return changed

    # tiny: train (the one reader of train.*) and nothing else.
    assert after(lambda p: p["profiles"]["tiny"]["train"].update(epochs=1)) == {
        "train": [f"{RESOLVED}:train modified"]}
    assert after(lambda p: p["profiles"]["tiny"]["registry"].update(margin=0.01)) == {
        "register": [f"{RESOLVED}:registry modified"]}

    # clip (extends tiny, overriding text.mode): every stage runs with --profile clip...
    _edit_params(repo, lambda p: p.update(profile="clip"))
    run_dvc(repo, "repro", "--single-item", "config")
    assert {stage for stage, what in _changes(repo).items() if "changed command" in what} == set(STAGES)
    run_dvc(repo, "commit", "--force", "--quiet")
    # ...a value clip inherits from tiny reruns exactly its readers...
    assert after(lambda p: p["profiles"]["tiny"]["text"].update(max_tokens=64)) == {
        "embeddings": [f"{RESOLVED}:text modified"], "train": [f"{RESOLVED}:text modified"]}
    assert after(lambda p: p["profiles"]["tiny"]["data"].update(image_size=96)) == {
        "shards": [f"{RESOLVED}:data modified"]}
    # ...while a value clip overrides, and another profile's, rerun nothing but `config`.
    assert after(lambda p: p["profiles"]["tiny"]["text"].update(mode="clip")) == {}
    assert after(lambda p: p["profiles"]["paper"]["train"].update(epochs=1)) == {}


def test_recorded_stages_tag_lineage_and_another_clone_pulls_the_same_bytes(pipeline_copy, tmp_path):
    repo = pipeline_copy
    _stand_ins(repo, ("shards", "embeddings"))
    (repo / "data" / "shards" / "a.tar").write_bytes(b"shard a")
    config = load_config(repo / "params.yaml")
    # A run of another params file or storage root: nothing recorded, and the tag says why.
    elsewhere = record_and_tag(repo, config, tmp_path / "params.yaml", repo / "data", ("config", "shards"), ("data/shards",))
    assert "is not the repository's params.yaml" in elsewhere["dvc.unversioned"] and not (repo / "dvc.lock").exists()
    assert "is not" in why_unversioned(repo, config, repo / "params.yaml", tmp_path / "data")
    assert "profile 'clip'" in why_unversioned(repo, load_config(repo / "params.yaml", "clip"), repo / "params.yaml",
                                               repo / "data")

    tags = record_and_tag(repo, config, repo / "params.yaml", repo / "data", ("config", "shards", "embeddings"),
                          ("data/shards", "data/embeddings"))
    head = git(repo, "rev-parse", "HEAD").strip()
    assert tags["git.commit"] == head and tags["git.dirty"] == "false"
    assert tags["dvc.data/shards"] == locked_hashes(repo)["data/shards"] and tags["dvc.data/shards"].endswith(".dir")
    assert _changes(repo, "config", "shards", "embeddings") == {}
    with pytest.raises(Exception, match="not recorded by DVC"):
        lineage_tags(repo, ("data/models",))

    (repo / "data" / "shards" / "b.tar").write_bytes(b"shard b")  # new data: recorded anew, a new hash
    record_stages(repo, ("shards",), config.profile)
    assert lineage_tags(repo, ("data/shards",))["dvc.data/shards"] != tags["dvc.data/shards"]

    # Another clone of the same commit, sharing only the remote: the first hash pulls the first bytes.
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(repo), str(other))
    restored = pull(other, tags["dvc.data/shards"], "restored/shards")
    assert sorted(p.name for p in restored.iterdir()) == ["a.tar", "stand-in"]
    assert filecmp.cmp(restored / "a.tar", repo / "data" / "shards" / "a.tar", shallow=False)


@pytest.mark.slow
def test_dvc_repro_runs_the_pipeline_to_a_registered_model_that_names_its_data(tmp_path):
    """`dvc repro` in a fresh clone, on a small default profile: the same steps as Dagster's assets,
    to a registered, gated model whose version carries its git commit and data hashes; after it
    `dvc status` is clean and git sees only dvc.lock."""
    clone = make_clone(tmp_path / "clone")
    write_slice(clone / "data" / "sample" / "slice.jsonl", 0, 16, split="dev", relative=True)
    store = tmp_path / "mlflow.db"
    params = write_params(clone / "params.yaml", ["data/sample/slice.jsonl"], "data/incoming", "data",
                          f"sqlite:///{store}", default=True,
                          extra={"train": {"epochs": 2}, "registry": {"gate_metric": "sample-dev-retrieval/mean_recall@5"}})
    (clone / RESOLVED).write_text(resolved_yaml(params, TEST_PROFILE), encoding="utf-8")
    (clone / "data" / "incoming").mkdir(parents=True, exist_ok=True)
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "a small default profile")
    proc = subprocess.run([str(Path(VENV_BIN) / "dvc"), "repro"], cwd=clone, capture_output=True, text=True,
                          timeout=900, env=clone_env(clone))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert dvc_status(clone) == UP_TO_DATE
    changed = status_lines(clone)
    assert changed and only_pointer_files(changed), changed

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}", registry_uri=f"sqlite:///{store}")
    (version,) = client.search_model_versions(f"name='{load_config(params).registry.model_name}'")
    hashes = locked_hashes(clone)
    assert version.tags["git.commit"] == git(clone, "rev-parse", "HEAD").strip()
    for path in ("data/shards", "data/embeddings", "data/training_sets"):
        assert version.tags[f"dvc.{path}"] == hashes[path], path
    assert version.tags["flame.decision"] == "first-version"
    training_id = version.tags["flame.training_id"]
    assert (clone / "data" / "models" / training_id / "model.safetensors").is_file()
    assert (clone / "data" / "evaluations" / training_id / "evaluation.json").is_file()
    # A change of a training setting reruns training and what follows it, nothing before it.
    _edit_params(clone, lambda p: p["profiles"][TEST_PROFILE]["train"].update(lr=1e-4))
    subprocess.run([str(Path(VENV_BIN) / "dvc"), "repro", "--single-item", "config"], cwd=clone, check=True,
                   capture_output=True, env=clone_env(clone))
    assert set(_changes(clone)) == {"train"}
