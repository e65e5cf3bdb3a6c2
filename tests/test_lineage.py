"""One lineage, end to end: ``make demo`` in a fresh clone leaves ``dvc status`` clean and git
seeing nothing but DVC's pointer files; the registered version names its git commit and the DVC
hashes of its data; and a second clone, sharing only the DVC remote and the MLflow store, pulls
that training set by its hash and derives the same training id from it."""

import json
import subprocess

import pytest
import yaml

from flame.app.pipeline import TrainingSet, identity_of_training_set
from flame.config import load_config, resolved_yaml
from tests.fixtures.clone import REPO, VENV_BIN, clone_env, dvc_status, git, make_clone, only_pointer_files, status_lines

pytestmark = pytest.mark.slow

UP_TO_DATE = "Data and pipelines are up to date."
# The demo's pipeline at a tenth of its cost: lineage, not learning, is under test here.
LINEAGE_PROFILE = {"extends": "tiny", "text": {"captions_per_sample": 1}, "train": {"epochs": 3, "positives_per_image": 1}}


def run(clone, *args, timeout=900, **env):
    proc = subprocess.run(list(args), cwd=clone, capture_output=True, text=True, timeout=timeout,
                          env=clone_env(clone, **env))
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def test_demo_in_a_fresh_clone_then_a_second_clone_pulls_its_training_set(tmp_path):
    first = make_clone(tmp_path / "first")
    params = yaml.safe_load((first / "params.yaml").read_text(encoding="utf-8"))
    params["profiles"]["lineage"] = LINEAGE_PROFILE
    params["profile"] = "lineage"  # the default, so that DVC's stages select it too
    (first / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    (first / "params.resolved.yaml").write_text(resolved_yaml(first / "params.yaml"), encoding="utf-8")
    git(first, "commit", "-qam", "a smaller profile for this test")
    venv = REPO / ".venv"
    # The demo as a user runs it, on this checkout's installed environment (not reinstalled in the clone).
    out = run(first, "make", "-o", str(venv / ".installed"), "demo", f"VENV={venv}", timeout=1200)
    summary = json.loads(out.strip().splitlines()[-1])
    assert {"registered_model", "version", "aliases", "checkpoint", "metrics", "seconds"} <= set(summary)
    assert summary["version"] == 1 and "champion" in summary["aliases"]

    assert dvc_status(first) == UP_TO_DATE
    changed = status_lines(first)
    assert changed and only_pointer_files(changed), changed  # dvc.lock: the pointer file to commit

    store = f"sqlite:///{first / 'mlflow.db'}"
    shown = json.loads(run(first, str(VENV_BIN / "flame"), "registry", "show", "--json", "--tracking-uri", store))
    (version,) = shown["versions"]
    head = git(first, "rev-parse", "HEAD").strip()
    assert version["git_commit"] == head
    assert set(version["data_versions"]) == {"data/shards", "data/embeddings", "data/training_sets"}
    training_id = version["tags"]["flame.training_id"]

    # Another machine: a clone of the same commit, sharing only the DVC remote (../.dvc-remote beside
    # both clones) and the MLflow store; none of the first clone's data, DVC cache or dvc.lock.
    second = tmp_path / "second"
    git(tmp_path, "clone", "-q", str(first), str(second))
    assert git(second, "rev-parse", "HEAD").strip() == head and not (second / "data" / "training_sets").exists()
    pulled = run(second, str(VENV_BIN / "python"), "-m", "orchestration.versioning", "pull",
                 "--md5", version["data_versions"]["data/training_sets"], "--dest", "restored").strip()
    training_set = TrainingSet(second / "restored" / training_id)
    assert pulled == str(second / "restored") and training_set.shards.is_dir()
    config = load_config(second / "params.yaml")
    assert identity_of_training_set(config, training_set).id == training_id
