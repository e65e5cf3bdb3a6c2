"""``flame config``: one profile as flame resolves it, as YAML (the input of dvc.yaml's stages)."""

HELP = ("Print (or write with --out) the selected profile as flame resolves it: its extends: chain "
        "merged, schema defaults filled in, validated; paths as written (relative ones are taken "
        "relative to the params file's folder).")
HEADER = "# Written by `flame config` (dvc.yaml, stage config) from params.yaml; do not edit.\n"


def add_arguments(parser) -> None:
    parser.add_argument("--out", default=None, help="write it to this file, atomically (default: print it)")


def run(args, config) -> int:
    import yaml

    from flame.atomic import write_text
    from flame.config import load_config

    # Paths as written, not made absolute: the output is committed (params.resolved.yaml) and
    # must read the same in every clone, or DVC would see changed parameters.
    as_written = load_config(args.config, args.profile, resolve_paths=False)
    text = HEADER + yaml.safe_dump(as_written.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    if args.out:
        write_text(args.out, text)
    else:
        print(text, end="")
    return 0
