"""MLflow side costs, as one JSON object: logging a FLAME checkpoint as a pyfunc, loading it,
image-embedding throughput through ``predict`` (base64 input, as a served request carries
it), and the latency of one registration with its champion gate (challenger and champion
scored side by side on the first --gate-images images of the gate's benchmark). Local SQLite
store in a temporary folder, no server.

Usage: python benchmarks/mlflow_model_registry.py [--checkpoint DIR] [--images N] [--registrations N] [--gate-images N]
Default checkpoint: a freshly initialised tiny-profile FlameModel (cost, not quality, is measured).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from flame.config import load_config  # noqa: E402

SMOLLM2_HIDDEN = 576


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", default=None, help="a FLAME checkpoint folder (default: a fresh tiny model)")
    parser.add_argument("--images", type=int, default=64, help="sample images per predict call")
    parser.add_argument("--registrations", type=int, default=5, help="registrations to time (gate included)")
    parser.add_argument("--gate-images", type=int, default=16, help="images of the gate benchmark each gate scores")
    args = parser.parse_args()

    import mlflow
    import pandas as pd

    from flame.app.promotion import register_and_gate
    from flame.mlflow.pyfunc import log_flame_model
    from flame.mlflow.tracker import MlflowTracker

    images = sorted((ROOT / "data" / "sample" / "images").glob("*.jpg"))[: args.images]
    payload = pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in images]})
    with tempfile.TemporaryDirectory(prefix="flame-bench-mlflow-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        config = load_config(ROOT / "params.yaml", "tiny", overrides={
            "tracking": {"tracking_uri": uri, "experiment": "bench"}, "registry": {"model_name": "bench"}})
        checkpoint = Path(args.checkpoint) if args.checkpoint else _fresh_checkpoint(config, Path(tmp) / "ckpt")

        t0 = time.perf_counter()
        with MlflowTracker(config) as tracker:
            tracker.log_metrics({config.registry.gate_metric: 0.1})
            model_uri = log_flame_model(config, checkpoint, run_id=tracker.run_id)
        log_s = time.perf_counter() - t0

        mlflow.set_tracking_uri(uri)
        t0 = time.perf_counter()
        pyfunc = mlflow.pyfunc.load_model(model_uri)
        load_s = time.perf_counter() - t0
        pyfunc.predict(payload.head(2))  # warm-up
        t0 = time.perf_counter()
        out = pyfunc.predict(payload)
        predict_s = time.perf_counter() - t0

        reg_s = []
        for i in range(args.registrations):
            t0 = time.perf_counter()
            register_and_gate(config, model_uri, checkpoint_dir=checkpoint, run_id=tracker.run_id,
                              training_id=f"bench-{i}", limit=args.gate_images)
            reg_s.append(time.perf_counter() - t0)

    print(json.dumps({
        "benchmark": "mlflow_model_registry",
        "checkpoint": str(args.checkpoint or "fresh tiny FlameModel"),
        "log_model_seconds": round(log_s, 3),
        "load_model_seconds": round(load_s, 3),
        "predict_images": len(out),
        "predict_images_per_sec": round(len(out) / predict_s, 2),
        "register_and_gate_seconds_median": round(sorted(reg_s)[len(reg_s) // 2], 3) if reg_s else None,
        "cpu_count": os.cpu_count(),
    }))


def _fresh_checkpoint(config, out: Path) -> Path:
    from flame.model import FlameModel, ModelConfig

    return FlameModel(ModelConfig(embed_dim=SMOLLM2_HIDDEN, image=config.image, text=config.text.model_dump(mode="json"))).save(out)


if __name__ == "__main__":
    main()
