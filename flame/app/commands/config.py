"""``flame config``: one profile as flame resolves it, as YAML (the input of dvc.yaml's stages)."""

from flame.atomic import write_text
from flame.config import resolved_yaml

HELP = ("Print (or write with --out) the selected profile as flame resolves it: its extends: chain "
        "merged, schema defaults filled in, validated; paths as written (relative ones are taken "
        "relative to the params file's folder).")


def add_arguments(parser) -> None:
    parser.add_argument("--out", default=None, help="write it to this file, atomically (default: print it)")


def run(args, config) -> int:
    text = resolved_yaml(args.config, args.profile)
    if args.out:
        write_text(args.out, text)
    else:
        print(text, end="")
    return 0
