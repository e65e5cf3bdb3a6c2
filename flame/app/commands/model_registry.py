"""``flame registry show|promote|rollback|register``: the MLflow model registry gate."""

from __future__ import annotations

import json
from pathlib import Path

from flame.config import default_params_path
from flame.errors import FlameError
from flame.mlflow.store import require_store
from flame.paths import normalize_tracking_uri

# Actions that only make sense on a store with content: they never create one.
READING_ACTIONS = ("show", "promote", "rollback")

HELP = (
    "Inspect and change the MLflow model registry: show aliases and gate records, promote the "
    "challenger through the gate (or a given version by hand), roll the champion back, or "
    "register a logged model as a new challenger."
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "action", choices=["show", "promote", "rollback", "register"],
        help="show: versions, aliases and gate decisions; promote: score the challenger and the champion "
        "on the gate benchmark and promote if it wins (or force --version to champion); rollback: champion "
        "back to the previous champion; register: register --model-uri as a new challenger and gate it",
    )
    parser.add_argument("--json", action="store_true", help="show: print everything as JSON instead of a table")
    parser.add_argument("--version", default=None, help="promote: make this version the champion by hand, bypassing the gate")
    parser.add_argument("--model-uri", default=None, help="register: the logged model's URI (models:/m-..., runs:/RUN/model)")
    parser.add_argument("--checkpoint", default=None,
                        help="register: the checkpoint folder of --model-uri, scored against the champion")
    parser.add_argument("--run-id", default=None, help="register: the MLflow run the model belongs to")
    parser.add_argument("--training-id", default=None,
                        help="register: an id of the training; a version already carrying it is not registered again")
    parser.add_argument("--limit", type=int, default=None,
                        help="promote/register: score only the first N images of the gate benchmark (quick checks)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking/registry URI, or a path to a .db (SQLite) file; relative: to the current "
                        "folder (default: tracking.tracking_uri of the profile, relative to the params file's folder)")
    parser.add_argument("--model-name", default=None, help="registered model name (default: registry.model_name of the profile)")


def run(args, config) -> int:
    # The registry and the gate import mlflow and torch: loaded only once the arguments are parsed.
    from flame.app import promotion
    from flame.mlflow.registry import Registry

    updates = {}
    if args.tracking_uri:
        uri = normalize_tracking_uri(args.tracking_uri, Path.cwd())
        updates["tracking"] = config.tracking.model_copy(update={"tracking_uri": uri})
    if args.model_name:
        updates["registry"] = config.registry.model_copy(update={"model_name": args.model_name})
    if updates:
        config = config.model_copy(update=updates)
    if args.action in READING_ACTIONS:
        source = ("--tracking-uri" if args.tracking_uri
                  else f"tracking.tracking_uri of {args.config or default_params_path()}")
        require_store(config.tracking.tracking_uri, source)

    if args.action == "show":
        shown = Registry.open(config, must_exist=True).show()
        shown["gate_metric"] = config.registry.gate_metric
        for version in shown["versions"]:
            version["decision"] = version["tags"].get(promotion.TAG_DECISION)
        print(json.dumps(shown, indent=2, sort_keys=True) if args.json else format_versions(shown))
        return 0
    if args.action == "promote" and args.version is not None:
        result = promotion.promote(config, args.version).to_dict()
    elif args.action == "promote":
        result = promotion.gate_challenger(config, limit=args.limit).to_dict()
    elif args.action == "rollback":
        result = promotion.rollback(config)
    else:
        if not args.model_uri or not args.checkpoint:
            raise FlameError("registry register needs --model-uri and --checkpoint (the model's checkpoint folder, to score it)")
        result = promotion.register_and_gate(config, args.model_uri, checkpoint_dir=args.checkpoint, run_id=args.run_id,
                                             training_id=args.training_id, limit=args.limit).to_dict()
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def format_versions(shown: dict) -> str:
    """``Registry.show``'s result as a table: one row per version."""
    from flame.app import promotion as p

    header = ("version", "aliases", "decision", "challenger", "champion", "difference [interval]", "git commit")
    rows = [header]
    for v in shown["versions"]:
        tags = v["tags"]
        champion = tags.get(p.TAG_CHAMPION_SCORE)
        interval = ""
        if tags.get(p.TAG_DIFF) is not None:
            interval = (f"{float(tags[p.TAG_DIFF]):+.4f} "
                        f"[{float(tags[p.TAG_CI_LOW]):+.4f}, {float(tags[p.TAG_CI_HIGH]):+.4f}]")
        rows.append((
            v["version"], ",".join(v["aliases"]) or "-", v["decision"] or "-",
            _score(tags.get(p.TAG_CHALLENGER_SCORE)),
            f"{_score(champion)} (v{tags[p.TAG_CHAMPION_VERSION]})" if champion is not None else "-",
            interval or "-", (v.get("git_commit") or "-")[:12],
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"{shown['model_name']}  gate metric {shown['gate_metric']}"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _score(value: str | None) -> str:
    return "-" if value is None else f"{float(value):.4f}"
