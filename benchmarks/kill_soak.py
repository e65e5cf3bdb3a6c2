"""A kill -9 soak of ``flame download``, ``flame embed`` and ``flame train``: each trial kills a
command with SIGKILL at a random moment, reruns the same command to completion, and compares
its outputs with those of an uninterrupted run of that command.

Usage: python benchmarks/kill_soak.py [--trials 20] [--seed 0] [--steps download,embed,train]

The trials are split over the steps in order (20: 7 download, 7 embed, 6 train). Everything
runs on a small slice of data/sample (``--images``, in shards of ``--per-shard``) with the tiny
profile (a copy of params.yaml whose tiny profile is shrunk: small shards, few epochs,
checkpoints every 2 steps), each command as ``python -m flame ... --profile tiny`` with
HF_HUB_OFFLINE=1 in a folder of its own. ``flame download`` fetches from an HTTP server on
127.0.0.1 that delays each image (``--image-delay``), so a kill can land inside a shard;
``flame train`` always gets ``--resume`` (the killed run, its rerun and the reference alike).
A kill is ``killpg(SIGKILL)`` of the command's process group: img2dataset's worker processes
and DataLoader workers die with it, as they do when a machine or a job is killed.

Kill moments: the uninterrupted (reference) run of each step is timed first: its wall time T
and the moment W its output folder got its first file (the end of start-up: imports, the LLM
load). A trial kills at W + U(0.05, 0.95) x (T - W), so kills land in the work, not in the
imports. A command that ends before its kill counts as a trial all the same, and as
``finished_before_kill``.

What counts (summed over trials; ``per_step`` has the same per step):

- download: the sample keys of the tar members of every complete shard (``NNNNN_stats.json``
  present), and the keys of each shard's parquet. ``lost``: keys of the reference missing after
  recovery; ``duplicated``: a key held more than once across all shards (tar members or parquet
  rows), each extra copy counted; ``mismatched``: a sample whose image bytes, ``.txt`` or
  ``.json`` differ from the reference's, or that sits in another shard.
- embed: per shard file of the store, its keys and its ``embeddings`` rows. ``lost`` and
  ``duplicated`` likewise on keys; ``mismatched``: a sample whose embeddings differ from the
  reference's by more than ``--embed-atol`` (they are bit-identical on one machine; the largest
  difference seen is reported as ``max_abs_diff``).
- train: the final checkpoint against the reference (same seed, no kill). ``mismatched``: one
  per trial whose weights differ by more than 1e-6 (the exact-resume tolerance of
  tests/test_train.py), whose summary's epochs or per-epoch losses differ, or that has no final
  summary; ``lost`` / ``duplicated``: training steps missing from / counted beyond the summary's
  ``steps`` of the reference (without a summary: beyond the checkpoint's step). Losses that
  metrics.jsonl logs twice (steps after the last checkpoint, trained again on resume) are
  reported as ``metrics_steps_logged_twice``, not as duplicated steps.
- ``recovered``: trials whose rerun exited 0 and had nothing lost, duplicated or mismatched.
  Files a recovered run leaves behind that the reference does not have (a partial shard, a
  temporary file) are listed as ``leftovers``.

The last stdout line is one JSON object ``{"trials", "recovered", "lost", "duplicated",
"mismatched", "finished_before_kill", "per_step", "failures", "seconds", ...}``; it is also
written to ``--out`` (default benchmarks/results/kill_soak.json). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
STEPS = ("download", "embed", "train")
TRAIN_ATOL = 1e-6  # tests/test_train.py: a resumed run equals an uninterrupted one to this
COMMAND_TIMEOUT_S = 600


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- the data and the configuration -------------------------------------------------------


class _ImageServer(ThreadingHTTPServer):
    request_queue_size = 128  # img2dataset opens its threads' connections at once
    daemon_threads = True


def start_image_server(rows: list[dict], delay_s: float) -> tuple[_ImageServer, str]:
    """Serve ``/<i>.jpg`` -> the i-th row's image, each after ``delay_s``."""
    bodies = {f"/{i}.jpg": (SAMPLE / row["url"]).read_bytes() for i, row in enumerate(rows)}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = bodies.get(self.path)
            time.sleep(delay_s)
            try:
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "image/jpeg" if body else "text/plain")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client was killed

        def log_message(self, *args):
            pass

    server = _ImageServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def write_manifest(path: Path, rows: list[dict], base_url: str) -> Path:
    lines = [json.dumps({"url": f"{base_url}/{i}.jpg", "captions": r["captions"]}, ensure_ascii=False)
             for i, r in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_params(path: Path, per_shard: int, epochs: int, batch_size: int) -> Path:
    """params.yaml with its tiny profile shrunk for the soak."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    tiny = params["profiles"]["tiny"]
    tiny.setdefault("data", {}).update({"number_sample_per_shard": per_shard, "processes": 1, "threads": 2})
    tiny.setdefault("train", {}).update({"epochs": epochs, "batch_size": batch_size, "warmup_steps": 2,
                                         "checkpoint_every_steps": 2, "log_every_steps": 1})
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


class Setup:
    """The commands of each step, all sharing one configuration and one input."""

    def __init__(self, work: Path, manifest: Path, params: Path):
        self.work, self.manifest, self.params = work, manifest, params
        self.shards: Path | None = None  # the reference download, input of embed and train
        self.store: Path | None = None  # the reference embedding store, input of train

    def command(self, step: str, out: Path) -> list[str]:
        base = [sys.executable, "-m", "flame", step, "--config", str(self.params), "--profile", "tiny"]
        if step == "download":
            return base + ["--manifest", str(self.manifest), "--out", str(out), "--no-progress"]
        if step == "embed":
            return base + ["--input", str(self.shards), "--out", str(out), "--no-progress"]
        return base + ["--shards", str(self.shards), "--embeddings", str(self.store), "--out", str(out), "--resume", "--no-tracking"]


def command_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ---- running and killing ----------------------------------------------------------------------


def _popen(cmd: list[str], folder: Path, name: str) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{name}.stdout").open("wb") as out, (folder / f"{name}.stderr").open("wb") as err:
        return subprocess.Popen(cmd, cwd=folder, env=command_env(), stdout=out, stderr=err, start_new_session=True)


def _tail(folder: Path, name: str, lines: int = 6) -> str:
    text = (folder / f"{name}.stderr").read_text(encoding="utf-8", errors="replace")
    return "\n".join(text.strip().splitlines()[-lines:])


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_timed(cmd: list[str], folder: Path, out: Path, name: str) -> dict:
    """Run to the end; returns rc, wall time and when ``out`` first held a file."""
    start = time.perf_counter()
    proc = _popen(cmd, folder, name)
    work_start = None
    while proc.poll() is None:
        if work_start is None and out.is_dir() and any(out.iterdir()):
            work_start = time.perf_counter() - start
        if time.perf_counter() - start > COMMAND_TIMEOUT_S:
            _kill_group(proc)
            raise RuntimeError(f"{' '.join(cmd)} ran over {COMMAND_TIMEOUT_S} s")
        time.sleep(0.01)
    wall = time.perf_counter() - start
    return {"rc": proc.returncode, "wall_s": wall, "work_start_s": wall if work_start is None else work_start}


def run_killed(cmd: list[str], folder: Path, name: str, kill_at: float) -> bool:
    """Start ``cmd`` and SIGKILL its process group ``kill_at`` s later; False if it ended first."""
    start = time.perf_counter()
    proc = _popen(cmd, folder, name)
    while time.perf_counter() - start < kill_at:
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    if proc.poll() is not None:
        return False
    _kill_group(proc)
    return True


# ---- what each step leaves behind ---------------------------------------------------------------


def _count_duplicates(keys: list[str]) -> int:
    return len(keys) - len(set(keys))


def download_outputs(out: Path) -> dict:
    """{"samples": {key: (shard, {ext: bytes})}, "duplicated": n, "parquet": {shard: [keys]}, "files": [...]}."""
    import pyarrow.parquet as pq

    samples: dict[str, tuple[str, dict[str, bytes]]] = {}
    tar_keys: list[str] = []
    parquet: dict[str, list[str]] = {}
    for stats in sorted(out.glob("*_stats.json")):
        shard = stats.name[: -len("_stats.json")]
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(out / f"{shard}.tar") as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                files = members.setdefault(key, {})
                if ext in files:
                    tar_keys.append(key)  # the same member twice in one tar
                files[ext] = tar.extractfile(member).read()
        for key, files in members.items():
            tar_keys.append(key)
            samples[key] = (shard, files)
        parquet[shard] = [str(k) for k in pq.read_table(out / f"{shard}.parquet", columns=["key"])["key"].to_pylist()]
    parquet_keys = [k for keys in parquet.values() for k in keys]
    return {"samples": samples, "duplicated": max(_count_duplicates(tar_keys), _count_duplicates(parquet_keys)),
            "parquet": parquet, "files": _files(out)}


def compare_download(ref: dict, got: dict) -> dict:
    lost = sorted(set(ref["samples"]) - set(got["samples"]))
    mismatched = sorted(k for k, v in got["samples"].items() if k in ref["samples"] and v != ref["samples"][k])
    extra = sorted(set(got["samples"]) - set(ref["samples"]))
    parquet_diff = sorted(s for s in set(ref["parquet"]) | set(got["parquet"])
                          if sorted(ref["parquet"].get(s, [])) != sorted(got["parquet"].get(s, [])))
    return {"lost": len(lost), "duplicated": got["duplicated"], "mismatched": len(mismatched) + len(extra),
            "examples": {"lost": lost[:5], "mismatched": mismatched[:5], "unexpected": extra[:5],
                         "parquet_differs": parquet_diff[:5]},
            "leftovers": sorted(set(got["files"]) - set(ref["files"]))}


def _store_folder(out: Path) -> Path | None:
    found = sorted(p.parent for p in out.glob("*/meta.json"))
    return found[0] if len(found) == 1 else None


def embed_outputs(out: Path) -> dict:
    """{"rows": {key: (shard, tensor)}, "duplicated": n, "files": [...]}."""
    from safetensors import safe_open

    rows = {}
    keys_seen: list[str] = []
    folder = _store_folder(out)
    for path in sorted(folder.glob("*.safetensors")) if folder else []:
        if path.name.startswith("."):
            continue
        with safe_open(str(path), framework="pt") as handle:
            keys = json.loads((handle.metadata() or {}).get("keys", "[]"))
            tensor = handle.get_tensor("embeddings").float()
        shard = path.name[: -len(".safetensors")]
        keys_seen.extend(keys)
        for i, key in enumerate(keys):
            rows[key] = (shard, tensor[i])
    return {"rows": rows, "duplicated": _count_duplicates(keys_seen), "files": _files(out)}


def compare_embed(ref: dict, got: dict, atol: float) -> dict:
    lost = sorted(set(ref["rows"]) - set(got["rows"]))
    mismatched, max_diff = [], 0.0
    for key, (shard, row) in got["rows"].items():
        if key not in ref["rows"]:
            mismatched.append(key)
            continue
        ref_shard, ref_row = ref["rows"][key]
        diff = float((row - ref_row).abs().max()) if row.shape == ref_row.shape else float("inf")
        max_diff = max(max_diff, diff)
        if shard != ref_shard or diff > atol:
            mismatched.append(key)
    return {"lost": len(lost), "duplicated": got["duplicated"], "mismatched": len(mismatched),
            "max_abs_diff": max_diff, "examples": {"lost": lost[:5], "mismatched": sorted(mismatched)[:5]},
            "leftovers": sorted(set(got["files"]) - set(ref["files"]))}


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def train_outputs(out: Path) -> dict:
    from safetensors.torch import load_file

    weights = out / "model.safetensors"
    logged = []  # the steps metrics.jsonl logged a training loss for
    if (out / "metrics.jsonl").exists():
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        logged = [r.get("step") for r in records if "train/loss" in r.get("metrics", {})]
    return {"weights": load_file(str(weights)) if weights.exists() else None,
            "summary": _read_json(out / "train_summary.json"),
            "model_config": _read_json(out / "model_config.json"),
            "logged_steps": logged, "files": _files(out)}


def compare_train(ref: dict, got: dict) -> dict:
    ref_steps = ref["summary"]["steps"]
    # Not a lost step (the summary counts each once): losses logged again for steps after the
    # last checkpoint, which the resumed run trained a second time.
    logged_twice = len(got["logged_steps"]) - len(set(got["logged_steps"]))
    if got["summary"] is None or got["weights"] is None:
        trained = (got["model_config"] or {}).get("trained_steps") or 0
        return {"lost": max(0, ref_steps - trained), "duplicated": 0, "mismatched": 1, "max_abs_diff": None,
                "metrics_steps_logged_twice": logged_twice,
                "examples": {"missing": f"no final summary; the checkpoint holds step {trained} of {ref_steps}"},
                "leftovers": []}
    steps = got["summary"]["steps"]
    diffs = {name: float((got["weights"][name].float() - t.float()).abs().max())
             for name, t in ref["weights"].items()
             if name in got["weights"] and got["weights"][name].shape == t.shape}
    same_tensors = diffs.keys() == ref["weights"].keys() == got["weights"].keys()
    max_diff = max(diffs.values(), default=float("inf")) if same_tensors else float("inf")
    counters = {k: (ref["summary"][k], got["summary"][k]) for k in ("epochs", "steps", "losses")
                if ref["summary"][k] != got["summary"][k]}
    mismatched = int(max_diff > TRAIN_ATOL or bool(counters))
    return {"lost": max(0, ref_steps - steps), "duplicated": max(0, steps - ref_steps), "mismatched": mismatched,
            "max_abs_diff": max_diff, "metrics_steps_logged_twice": logged_twice,
            "examples": {"counters_differ": {k: list(v) for k, v in counters.items() if k != "losses"}
                         | ({"losses": "differ"} if "losses" in counters else {})},
            "leftovers": sorted(set(got["files"]) - set(ref["files"]))}


def _files(out: Path) -> list[str]:
    """Relative paths under ``out``, the store's fingerprint folder and logs left out of the comparison."""
    if not out.is_dir():
        return []
    skip = {"download_summary.json", "metrics.jsonl", "train_summary.json"}
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name not in skip)


def _item_count(step: str, ref: dict) -> int:
    """What a trial whose outputs cannot be read has lost: every sample, or every step."""
    if step == "train":
        return ref["summary"]["steps"]
    return len(ref["samples" if step == "download" else "rows"])


def outputs(step: str, out: Path) -> dict:
    return {"download": download_outputs, "embed": embed_outputs, "train": train_outputs}[step](out)


def compare(step: str, ref: dict, got: dict, args) -> dict:
    if step == "download":
        return compare_download(ref, got)
    if step == "embed":
        return compare_embed(ref, got, args.embed_atol)
    return compare_train(ref, got)


# ---- the soak -------------------------------------------------------------------------------------


def split_trials(trials: int, steps: list[str]) -> dict[str, int]:
    base, extra = divmod(trials, len(steps))
    return {step: base + (i < extra) for i, step in enumerate(steps)}


def reference_run(step: str, setup: Setup) -> dict:
    folder = setup.work / step / "reference"
    out = folder / "out"
    timing = run_timed(setup.command(step, out), folder, out, "run")
    if timing["rc"] != 0:
        raise RuntimeError(f"the reference {step} run failed (rc {timing['rc']}):\n{_tail(folder, 'run', 20)}")
    log(f"[{step}] reference: {timing['wall_s']:.1f} s, output from {timing['work_start_s']:.1f} s")
    return {**timing, "out": out, "outputs": outputs(step, out)}


def trial(step: str, index: int, setup: Setup, ref: dict, rng: random.Random, args) -> dict:
    folder = setup.work / step / f"trial{index:02d}"
    out = folder / "out"
    cmd = setup.command(step, out)
    window = ref["wall_s"] - ref["work_start_s"]
    kill_at = ref["work_start_s"] + rng.uniform(0.05, 0.95) * window
    started = time.perf_counter()
    killed = run_killed(cmd, folder, "killed", kill_at)
    rerun = run_timed(cmd, folder, out, "rerun")
    record = {"step": step, "trial": index, "kill_at_s": round(kill_at, 2), "killed": killed,
              "rerun_rc": rerun["rc"], "rerun_s": round(rerun["wall_s"], 2)}
    try:
        result = compare(step, ref["outputs"], outputs(step, out), args)
    except Exception as exc:  # noqa: BLE001 - unreadable outputs are a finding, not a crash of the soak
        result = {"lost": _item_count(step, ref["outputs"]), "duplicated": 0, "mismatched": 0,
                  "max_abs_diff": None, "examples": {"unreadable": f"{type(exc).__name__}: {exc}"}, "leftovers": []}
    record.update(result)
    record["recovered"] = rerun["rc"] == 0 and not (result["lost"] or result["duplicated"] or result["mismatched"])
    if rerun["rc"] != 0:
        record["rerun_error"] = _tail(folder, "rerun")
    record["seconds"] = round(time.perf_counter() - started, 2)
    status = "recovered" if record["recovered"] else "NOT RECOVERED"
    log(f"[{step} {index + 1}] kill at {kill_at:.2f} s{'' if killed else ' (had finished)'}, rerun rc "
        f"{rerun['rc']} in {rerun['wall_s']:.1f} s: {status} (lost {result['lost']}, duplicated "
        f"{result['duplicated']}, mismatched {result['mismatched']})")
    return record


def totals(records: list[dict]) -> dict:
    return {
        "trials": len(records),
        "recovered": sum(r["recovered"] for r in records),
        "lost": sum(r["lost"] for r in records),
        "duplicated": sum(r["duplicated"] for r in records),
        "mismatched": sum(r["mismatched"] for r in records),
        "finished_before_kill": sum(not r["killed"] for r in records),
    }


def chosen_steps(text: str) -> list[str]:
    """``--steps``, in pipeline order; [] when it names anything else."""
    steps = [s.strip() for s in text.split(",") if s.strip()]
    return [s for s in STEPS if s in steps] if steps and set(steps) <= set(STEPS) else []


def soak(args) -> dict:
    started = time.perf_counter()
    steps = chosen_steps(args.steps)
    counts = split_trials(args.trials, steps)
    rng = random.Random(args.seed)
    lines = (SAMPLE / "train.jsonl").read_text(encoding="utf-8").splitlines()[: args.images]
    rows = [json.loads(line) for line in lines]
    server, base_url = start_image_server(rows, args.image_delay)
    work_ctx = tempfile.TemporaryDirectory(prefix="flame-kill-soak-") if args.work is None else None
    work = Path(work_ctx.name if work_ctx else args.work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        setup = Setup(work, write_manifest(work / "manifest.jsonl", rows, base_url),
                      write_params(work / "params.yaml", args.per_shard, args.epochs, args.batch_size))
        references: dict[str, dict] = {}
        for step in STEPS[: STEPS.index(steps[-1]) + 1]:  # embed needs a download's shards, train its store too
            references[step] = reference_run(step, setup)
            if step == "download":
                setup.shards = references[step]["out"]
            elif step == "embed":
                setup.store = references[step]["out"]
        records, per_step = [], {}
        for step in steps:
            ref = references[step]
            step_records = [trial(step, i, setup, ref, rng, args) for i in range(counts[step])]
            records += step_records
            per_step[step] = {**totals(step_records), "reference_s": round(ref["wall_s"], 2),
                              "work_window_s": [round(ref["work_start_s"], 2), round(ref["wall_s"], 2)],
                              "seconds_per_trial": round(sum(r["seconds"] for r in step_records)
                                                         / max(1, len(step_records)), 2)}
            if step in ("embed", "train"):
                per_step[step]["max_abs_diff"] = max((r["max_abs_diff"] for r in step_records
                                                      if r["max_abs_diff"] is not None), default=None)
            if step == "train":
                per_step[step]["metrics_steps_logged_twice"] = sum(r["metrics_steps_logged_twice"]
                                                                   for r in step_records)
        return {
            "benchmark": "kill_soak",
            **totals(records),
            "seed": args.seed,
            "steps": steps,
            "per_step": per_step,
            "failures": [r for r in records if not r["recovered"]],
            "leftovers": {f"{r['step']}/{r['trial']}": r["leftovers"] for r in records if r["leftovers"]},
            "trial_log": [{k: r[k] for k in ("step", "trial", "kill_at_s", "killed", "rerun_rc", "recovered")}
                          for r in records],
            "data": {"images": len(rows), "per_shard": args.per_shard, "image_delay_s": args.image_delay,
                     "epochs": args.epochs, "batch_size": args.batch_size},
            "seconds": round(time.perf_counter() - started, 1),
        }
    finally:
        server.shutdown()
        server.server_close()
        if work_ctx:
            work_ctx.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20, help="kills in all, split over --steps in order (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    p.add_argument("--steps", default=",".join(STEPS), help="comma-separated steps to soak (default: all three)")
    p.add_argument("--images", type=int, default=24, help="sample images to download, embed and train on")
    p.add_argument("--per-shard", type=int, default=4, help="images per shard (data.number_sample_per_shard)")
    p.add_argument("--image-delay", type=float, default=0.1, help="seconds the local server waits per image")
    p.add_argument("--epochs", type=int, default=6, help="train.epochs of the soak's training")
    p.add_argument("--batch-size", type=int, default=8, help="train.batch_size of the soak's training")
    p.add_argument("--embed-atol", type=float, default=1e-3,
                   help="largest embedding difference that still counts as equal (default 1e-3)")
    p.add_argument("--work", default=None, help="keep every run's folder here (default: a temporary folder)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kill_soak.json"),
                   help="results JSON (default benchmarks/results/kill_soak.json); '' for none")
    args = p.parse_args(argv)
    if not chosen_steps(args.steps):
        p.error(f"--steps {args.steps!r}: a comma-separated list of {', '.join(STEPS)}")
    if args.trials < 1:
        p.error("--trials must be at least 1")
    if args.work and Path(args.work).is_dir() and any(Path(args.work).iterdir()):
        p.error(f"--work {args.work}: not empty (earlier outputs would be resumed, not redone)")
    result = soak(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
