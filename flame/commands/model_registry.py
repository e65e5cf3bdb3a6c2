"""``flame registry show|promote|rollback|register``: the MLflow model registry gate."""

from __future__ import annotations

import json

from flame.errors import FlameError

HELP = (
    "Inspect and change the MLflow model registry: show aliases and gate records, promote the "
    "challenger through the gate (or a given version by hand), roll the champion back, or "
    "register a logged model as a new challenger."
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "action", choices=["show", "promote", "rollback", "register"],
        help="show: aliases, versions and their gate decisions; promote: gate the challenger "
        "(or force --version to champion); rollback: champion back to the version it replaced; "
        "register: register --model-uri as a new challenger and gate it",
    )
    parser.add_argument("--version", default=None, help="promote: make this version the champion by hand, bypassing the gate")
    parser.add_argument("--model-uri", default=None, help="register: the logged model's URI (models:/m-..., runs:/RUN/model)")
    parser.add_argument("--run-id", default=None, help="register: the MLflow run the model and its gate metric belong to")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry URI (default: tracking.tracking_uri of the profile)")
    parser.add_argument("--model-name", default=None, help="registered model name (default: registry.model_name of the profile)")


def run(args, config) -> int:
    from flame.mlflow import gate

    updates = {}
    if args.tracking_uri:
        updates["tracking"] = config.tracking.model_copy(update={"tracking_uri": args.tracking_uri})
    if args.model_name:
        updates["registry"] = config.registry.model_copy(update={"model_name": args.model_name})
    if updates:
        config = config.model_copy(update=updates)

    if args.action == "show":
        result = gate.show(config)
    elif args.action == "promote":
        result = gate.promote(config, version=args.version).to_dict()
    elif args.action == "rollback":
        result = gate.rollback(config)
    else:
        if not args.model_uri:
            raise FlameError("registry register needs --model-uri")
        result = gate.register_model(config, args.model_uri, run_id=args.run_id).to_dict()
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0
