"""Data versions with DVC: record materialised data (``dvc add`` for asset folders,
``dvc commit`` for dvc.yaml stages), push it to the remote, and describe what a
training used (git commit + DVC hashes) as MLflow run tags.

DVC runs as its CLI in the repository, so its own repo lock serialises concurrent
callers; a caller that finds the lock taken waits and retries.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from flame.errors import FlameError

LOCK_RETRIES = 30
LOCK_WAIT_S = 1.0


def dvc_executable() -> str:
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else "dvc"


def run_dvc(repo: str | Path, *args: str) -> str:
    """``dvc ARGS`` in ``repo``; waits while another process holds DVC's lock."""
    cmd = [dvc_executable(), *args]
    for _ in range(LOCK_RETRIES):
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
        if proc.returncode == 0:
            return proc.stdout
        output = proc.stderr + proc.stdout
        if "Unable to acquire lock" not in output:
            break
        time.sleep(LOCK_WAIT_S)
    raise FlameError(f"`dvc {' '.join(args)}` failed in {repo}: {output.strip()[-800:]}")


def ensure_remote(repo: str | Path, url: str | Path, name: str = "local") -> None:
    """Make ``url`` (a path is taken relative to ``repo``) the default remote, in the
    git-ignored ``.dvc/config.local``, so choosing a remote leaves the committed config alone."""
    target = str(url)
    if "://" not in target:
        target = str((Path(repo) / target).resolve())
    run_dvc(repo, "remote", "add", "--local", "--force", "--default", name, target)


def _relative(repo: Path, path: str | Path) -> str:
    full = (repo / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    try:
        return full.relative_to(repo.resolve()).as_posix()
    except ValueError:
        raise FlameError(f"{full} is outside the DVC repository {repo}; DVC can only version data inside it") from None


def record_data(repo: str | Path, paths: list[str | Path] = (), stages: list[str] = (),
                push: bool = True, remote: str | None = None) -> dict[str, str]:
    """Record the current content of ``paths`` (``dvc add``) and of ``stages``' outputs
    (``dvc commit``), push them, and return ``{path: dvc hash}`` for all of them."""
    repo = Path(repo)
    rel = [_relative(repo, p) for p in paths]
    for p in rel:
        if not (repo / p).exists():
            raise FlameError(f"cannot record {repo / p}: it does not exist")
    if rel:
        run_dvc(repo, "add", "--quiet", *rel)
    if stages:
        run_dvc(repo, "commit", "--force", "--quiet", *stages)
    if push:
        targets = [f"{p}.dvc" for p in rel] + list(stages)
        run_dvc(repo, "push", "--quiet", *(["--remote", remote] if remote else []), *targets)
    hashes = data_hashes(repo)
    wanted = set(rel) | {out for stage in stages for out in stage_outputs(repo, stage)}
    return {p: h for p, h in hashes.items() if p in wanted}


def stage_outputs(repo: str | Path, stage: str) -> list[str]:
    dvc_yaml = Path(repo) / "dvc.yaml"
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")).get("stages", {}) if dvc_yaml.exists() else {}
    if stage not in stages:
        raise FlameError(f"{dvc_yaml}: no stage {stage!r}; stages: {sorted(stages)}")
    return [next(iter(o)) if isinstance(o, dict) else o for o in stages[stage].get("outs", [])]


def _dvc_files(repo: Path):
    for folder, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for name in files:
            if name.endswith(".dvc"):
                yield Path(folder) / name


def data_hashes(repo: str | Path) -> dict[str, str]:
    """``{path: md5}`` of every output recorded in ``*.dvc`` files and ``dvc.lock`` (paths
    relative to the repository root; directories end in ``.dir``)."""
    repo = Path(repo)
    hashes: dict[str, str] = {}
    for dvc_file in _dvc_files(repo):
        doc = yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}
        for out in doc.get("outs", []):
            path = (dvc_file.parent / out["path"]).relative_to(repo).as_posix()
            if out.get("md5"):
                hashes[path] = out["md5"]
    lock = repo / "dvc.lock"
    if lock.exists():
        doc = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
        for stage in (doc.get("stages") or {}).values():
            for out in stage.get("outs", []):
                if out.get("md5"):
                    hashes[out["path"]] = out["md5"]
    return hashes


def git_commit(repo: str | Path) -> tuple[str, bool]:
    """(HEAD commit, whether tracked files differ from it); ("unknown", True) outside git."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown", True
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    return head.stdout.strip(), dirty


def version_tags(repo: str | Path, paths: list[str | Path] | None = None) -> dict[str, str]:
    """MLflow run tags: ``git.commit``, ``git.dirty`` and ``dvc.<path>`` = hash for the
    recorded data (all of it, or only ``paths``)."""
    repo = Path(repo)
    sha, dirty = git_commit(repo)
    tags = {"git.commit": sha, "git.dirty": str(dirty).lower()}
    hashes = data_hashes(repo)
    if paths is not None:
        wanted = {_relative(repo, p) for p in paths}
        missing = wanted - set(hashes)
        if missing:
            raise FlameError(f"not recorded by DVC yet (record_data first): {sorted(missing)}")
        hashes = {p: h for p, h in hashes.items() if p in wanted}
    tags.update({f"dvc.{p}": h for p, h in sorted(hashes.items())})
    return tags


def is_dvc_repo(repo: str | Path) -> bool:
    return (Path(repo) / ".dvc").is_dir()


def record_and_tag(repo: str | Path, paths: list[str | Path], push: bool = True) -> dict[str, str]:
    """What an orchestrator calls after materialising data: record (and push) the ``paths``
    that lie inside the DVC repository ``repo``, and return MLflow run tags (git commit and
    their DVC hashes). Paths outside it, or a folder without DVC, are not versioned; the
    tag ``dvc.unversioned`` lists them instead of failing the run."""
    repo = Path(repo)
    inside, outside = [], []
    for p in paths:
        full = Path(p) if Path(p).is_absolute() else repo / p
        try:
            full.resolve().relative_to(repo.resolve())
            (inside if is_dvc_repo(repo) else outside).append(full)
        except ValueError:
            outside.append(full)
    if inside:
        record_data(repo, inside, push=push)
    tags = version_tags(repo, inside) if inside else dict(zip(("git.commit", "git.dirty"),
                                                           map(str, _git_pair(repo))))
    if outside:
        tags["dvc.unversioned"] = ", ".join(str(p) for p in outside)
    return tags


def _git_pair(repo: Path) -> tuple[str, str]:
    sha, dirty = git_commit(repo)
    return sha, str(dirty).lower()


def main(argv: list[str] | None = None) -> int:
    """``python -m orchestration.versioning [PATH...]``: record, push and print the tags."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Record data folders with DVC, push them, print their versions.")
    parser.add_argument("paths", nargs="*", help="data folders to record (dvc add)")
    parser.add_argument("--stage", action="append", default=[], help="dvc.yaml stage whose outputs to record (dvc commit)")
    parser.add_argument("--repo", default=os.getcwd(), help="the DVC/git repository (default: current folder)")
    parser.add_argument("--no-push", action="store_true", help="record only; do not push to the remote")
    args = parser.parse_args(argv)
    try:
        record_data(args.repo, args.paths, args.stage, push=not args.no_push)
        print(json.dumps(version_tags(args.repo), indent=2))
    except FlameError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
