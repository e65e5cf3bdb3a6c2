"""Data versions with DVC: one lineage, whoever runs the pipeline.

``dvc.yaml``'s stages (shards, embeddings, train, evaluate, register) are the pipeline's steps
over the storage layout (``flame.storage``) of the default storage root, ``data/``. ``dvc repro``
records them itself; a Dagster run that makes the same files records the stages it made with
``dvc commit`` (``record_stages``) and pushes them, so after either, ``dvc status`` is clean and
``dvc.lock`` is the pointer file to commit. A training's MLflow run, and the model version
registered from it, carry ``git.commit``, ``git.dirty`` and ``dvc.<path>`` = the DVC hash of each
of its inputs (``lineage_tags``): another machine pulls exactly that data with ``pull``.

A run whose configuration is not the repository's own (another params file or profile, or a
storage root outside ``data/``) has nothing dvc.yaml describes: it is not recorded, and its tag
``dvc.unversioned`` says why (``why_unversioned``).

A storage root in object storage (``s3://...``) is outside what dvc.yaml describes: there, the
training set each training reads is versioned by itself (``record_training_set``): its files go
straight from the bucket to the DVC remote (``dvc add --to-remote``), which must then be in object
storage too, and its hash is the tag ``dvc.data/training_sets/<training id>``. Nothing is written
in the repository; another machine pulls it by that hash.

DVC runs as its CLI in the repository with ``--wait-for-lock``, so concurrent callers queue on
DVC's own lock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from flame.atomic import write_text
from flame.config import FlameConfig, read_params, repo_root, resolved_yaml
from flame.errors import FlameError
from flame.locations import is_url

# The stages a Dagster run records, by what it has made: the data before a training, the model after it.
DATA_STAGES = ("config", "shards", "embeddings")
MODEL_STAGES = ("train", "evaluate", "register")
STORAGE_ROOT = "data"  # the storage root dvc.yaml describes, relative to the repository
RESOLVED_PARAMS = "params.resolved.yaml"  # the config stage's output
UNVERSIONED_TAG = "dvc.unversioned"


def dvc_executable() -> str:
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else "dvc"


def run_dvc(repo: str | Path, *args: str) -> str:
    """``dvc ARGS`` in ``repo``, waiting while another process holds DVC's lock."""
    proc = subprocess.run([dvc_executable(), "--wait-for-lock", *args], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise FlameError(f"`dvc {' '.join(args)}` failed in {repo}: {(proc.stderr + proc.stdout).strip()[-800:]}")
    return proc.stdout


def is_dvc_repo(repo: str | Path) -> bool:
    return (Path(repo) / ".dvc").is_dir()


def why_unversioned(repo: str | Path, config: FlameConfig, params_file: str | Path, storage_root: str | Path) -> str | None:
    """Why DVC cannot record a run of ``config`` (read from ``params_file``) writing under
    ``storage_root``; None when it can: the repository's own params.yaml and default profile,
    and the storage root dvc.yaml describes."""
    repo = Path(repo).resolve()
    if not is_dvc_repo(repo):
        return f"{repo} is not a DVC repository"
    if is_url(storage_root):
        return f"the storage root {storage_root} is in object storage; dvc.yaml describes {repo / STORAGE_ROOT}"
    if Path(params_file).resolve() != repo / "params.yaml":
        return f"the configuration {params_file} is not the repository's params.yaml, which dvc.yaml reads"
    default = read_params(repo / "params.yaml").get("profile")
    if config.profile != default:
        return f"profile {config.profile!r} is not params.yaml's profile {default!r}, which dvc.yaml runs"
    if Path(storage_root).resolve() != repo / STORAGE_ROOT:
        return f"the storage root {storage_root} is not {repo / STORAGE_ROOT}, which dvc.yaml describes"
    return None


def record_stages(repo: str | Path, stages: tuple[str, ...] | list[str], profile: str, push: bool = True) -> None:
    """Record the current deps and outputs of ``stages`` in dvc.lock (``dvc commit``), and push
    their data to the default remote. The config stage's output is written first, as
    ``dvc repro config`` would, so what is recorded is the configuration the run used."""
    repo = Path(repo)
    if "config" in stages:
        write_text(repo / RESOLVED_PARAMS, resolved_yaml(repo / "params.yaml", profile))
    (repo / STORAGE_ROOT / "incoming").mkdir(parents=True, exist_ok=True)  # a dependency of the shards stage
    run_dvc(repo, "commit", "--force", "--quiet", *stages)
    if push:
        run_dvc(repo, "push", "--quiet", *stages)


def locked_hashes(repo: str | Path) -> dict[str, str]:
    """``{path: md5}`` of every output recorded in dvc.lock and ``*.dvc`` files (paths relative
    to the repository; folders end in ``.dir``)."""
    repo = Path(repo)
    hashes: dict[str, str] = {}
    for dvc_file in _dvc_files(repo):
        doc = yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}
        for out in doc.get("outs", []):
            if out.get("md5"):
                hashes[(dvc_file.parent / out["path"]).relative_to(repo).as_posix()] = out["md5"]
    lock = repo / "dvc.lock"
    if lock.exists():
        for stage in ((yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages") or {}).values():
            for out in stage.get("outs", []):
                if out.get("md5"):
                    hashes[out["path"]] = out["md5"]
    return hashes


def _dvc_files(repo: Path):
    for folder, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        yield from (Path(folder) / name for name in files if name.endswith(".dvc"))


def git_commit(repo: str | Path) -> tuple[str, bool]:
    """(HEAD commit, whether tracked files differ from it); ("unknown", True) outside git."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown", True
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    return head.stdout.strip(), dirty


def lineage_tags(repo: str | Path, paths: list[str] | tuple[str, ...]) -> dict[str, str]:
    """MLflow tags: ``git.commit``, ``git.dirty`` and ``dvc.<path>`` = the recorded hash of each
    of ``paths`` (relative to the repository); an error names a path DVC has not recorded."""
    sha, dirty = git_commit(repo)
    hashes = locked_hashes(repo)
    missing = [p for p in paths if p not in hashes]
    if missing:
        raise FlameError(f"not recorded by DVC in {repo}: {missing}; record the stages that make them first")
    return {"git.commit": sha, "git.dirty": str(dirty).lower(), **{f"dvc.{p}": hashes[p] for p in paths}}


def outputs_of(repo: str | Path, stages: tuple[str, ...] | list[str]) -> list[str]:
    """The outputs dvc.yaml declares for ``stages``."""
    declared = (yaml.safe_load((Path(repo) / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages", {})
    outs = []
    for stage in stages:
        if stage not in declared:
            raise FlameError(f"{Path(repo) / 'dvc.yaml'}: no stage {stage!r}; stages: {sorted(declared)}")
        outs += [next(iter(o)) if isinstance(o, dict) else o for o in declared[stage].get("outs", [])]
    return outs


def record_and_tag(repo: str | Path, config: FlameConfig, params_file: str | Path, storage_root: str | Path,
                   stages: tuple[str, ...], tag_paths: tuple[str, ...]) -> dict[str, str]:
    """What a Dagster run calls once it has made the outputs of ``stages``: record and push them,
    and return the lineage tags of ``tag_paths``; for a run dvc.yaml does not describe, only the
    git commit of the code and ``dvc.unversioned`` (why)."""
    why = why_unversioned(repo, config, params_file, storage_root)
    if why is not None:
        sha, dirty = git_commit(repo_root())
        return {"git.commit": sha, "git.dirty": str(dirty).lower(), UNVERSIONED_TAG: why}
    record_stages(repo, stages, config.profile)
    return lineage_tags(repo, tag_paths)


def default_remote_url(repo: str | Path) -> str:
    """The URL of the repository's default DVC remote (an error when there is none)."""
    try:
        name = run_dvc(repo, "remote", "default").strip()
        return run_dvc(repo, "config", f"remote.{name}.url").strip()
    except FlameError:
        raise FlameError(f"{repo}: no default DVC remote (dvc remote add -d NAME s3://bucket/prefix)") from None


def record_training_set(repo: str | Path, training_set: str, training_id: str) -> dict[str, str]:
    """Version the training set at the object-store URL ``training_set``: its files sent straight
    to the repository's default DVC remote, from a scratch DVC project that shares only that
    remote. Returns the lineage tags: the git commit and ``dvc.data/training_sets/<training id>``."""
    sha, dirty = git_commit(repo)
    tags = {"git.commit": sha, "git.dirty": str(dirty).lower()}
    remote = default_remote_url(repo) if is_dvc_repo(repo) else ""
    if not is_url(remote):
        why = (f"the DVC remote {remote or '(none)'} of {repo} is not in object storage, where the training set "
               f"{training_set} is: dvc remote add -d NAME s3://bucket/prefix")
        return {**tags, UNVERSIONED_TAG: why}
    name = f"{STORAGE_ROOT}/training_sets/{training_id}"
    with tempfile.TemporaryDirectory(prefix="flame-dvc-") as scratch:
        run_dvc(scratch, "init", "--no-scm", "--quiet")
        run_dvc(scratch, "remote", "add", "--default", "origin", remote)
        run_dvc(scratch, "add", "--quiet", str(training_set), "--to-remote", "--out", training_id)
        out = yaml.safe_load((Path(scratch) / f"{training_id}.dvc").read_text(encoding="utf-8"))["outs"][0]
    return {**tags, f"dvc.{name}": out["md5"]}


def pull(repo: str | Path, md5: str, dest: str) -> Path:
    """Fetch the data DVC recorded with hash ``md5`` from the default remote into
    ``repo/dest`` (through a pointer file ``dest.dvc`` written beside it): how another machine
    gets exactly the data a model version names (its ``dvc.<path>`` tag)."""
    repo = Path(repo)
    pointer = repo / f"{dest}.dvc"
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{dest}.dvc"], cwd=repo).returncode == 0
    if ignored:
        raise FlameError(f"{dest} is in a folder git ignores, where DVC refuses pointer files; "
                         "pull into another folder (e.g. --dest pulled/<name>)")
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(yaml.safe_dump({"outs": [{"md5": md5, "hash": "md5", "path": Path(dest).name}]}), encoding="utf-8")
    run_dvc(repo, "pull", "--quiet", str(pointer.relative_to(repo)))
    return repo / dest


def main(argv: list[str] | None = None) -> int:
    """``python -m orchestration.versioning tags PATH...`` or ``pull --md5 X.dir --dest FOLDER``."""
    parser = argparse.ArgumentParser(description="Data versions with DVC.")
    sub = parser.add_subparsers(dest="action", required=True)
    tags = sub.add_parser("tags", help="print the lineage tags of recorded paths")
    tags.add_argument("paths", nargs="+", help="paths dvc.lock or a .dvc file records, e.g. data/shards")
    fetch = sub.add_parser("pull", help="fetch recorded data by its hash (a model version's dvc.<path> tag)")
    fetch.add_argument("--md5", required=True, help="its hash, e.g. 0123...abcd.dir")
    fetch.add_argument("--dest", required=True, help="where to put it, relative to the repository")
    for action in (tags, fetch):
        action.add_argument("--repo", default=os.getcwd(), help="the git + DVC repository (default: current folder)")
    args = parser.parse_args(argv)
    try:
        if args.action == "tags":
            print(json.dumps(lineage_tags(args.repo, args.paths), indent=2))
        else:
            print(pull(args.repo, args.md5, args.dest))
    except FlameError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
