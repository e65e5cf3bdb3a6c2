"""The ``flame`` command line. Each subcommand lives in a module of ``flame/app/commands/``
exposing ``HELP``, ``add_arguments(parser)`` and ``run(args, config) -> int``."""

from __future__ import annotations

import argparse
import logging
import sys

from flame.app.commands import config as config_command
from flame.app.commands import demo, download, embed, evaluate, model_registry, predict, train
from flame.config import ConfigError, load_config
from flame.errors import FlameError

COMMANDS = {
    "download": download,
    "embed": embed,
    "train": train,
    "evaluate": evaluate,
    "predict": predict,
    "registry": model_registry,
    "demo": demo,
    "config": config_command,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flame",
        description="FLAME pipeline: download image-text data, embed captions with a frozen LLM, "
        "train a ViT against them, evaluate and register the model.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        cmd.add_argument("--profile", default=None, help="configuration profile (default: params.yaml's 'profile', i.e. tiny)")
        cmd.add_argument("--config", default=None, help="path to params.yaml (default: ./params.yaml, else the project's); "
                         "relative paths in it are taken relative to its folder")
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, args.profile)
        return int(args._module.run(args, config) or 0)
    except (ConfigError, FlameError, FileNotFoundError, UnicodeDecodeError) as exc:
        print(f"flame {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flame {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
