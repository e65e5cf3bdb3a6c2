"""Time `make demo`'s pipeline (python -m orchestration.demo) from scratch in a temporary
storage root, Dagster instance and MLflow store; prints one JSON object: total seconds
(target: under 600 on 2 CPU cores), seconds per Dagster step, and the demo's summary."""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="flame-demo-bench-") as tmp:
        tmp = Path(tmp)
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "orchestration.demo", "--dagster-home", str(tmp / "dagster"),
             "--storage-root", str(tmp / "storage"), "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"],
            cwd=REPO, capture_output=True, text=True,
        )
        wall = time.monotonic() - start
        if proc.returncode != 0:
            print(json.dumps({"error": proc.stderr.strip()[-2000:], "returncode": proc.returncode}))
            return 1
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({
        "benchmark": "demo_timing",
        "wall_seconds": round(wall, 1),
        "budget_seconds": 600,
        "within_budget": wall < 600,
        "steps": summary.get("steps"),
        "metrics": summary["metrics"],
        "version": summary["version"],
        "aliases": summary["aliases"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
