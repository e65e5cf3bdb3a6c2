"""``flame demo``: the whole pipeline on the bundled sample set, through Dagster.

The library does not import Dagster, so this runs ``python -m orchestration.demo`` in a
subprocess with the same options.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from flame.config import repo_root
from flame.paths import normalize_tracking_uri

HELP = ("run the whole pipeline through Dagster on the sample set (download, embed, train, evaluate, "
        "register, promote); the last line printed is a JSON summary")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dagster-home", default=None,
                        help="Dagster instance folder (default: $DAGSTER_HOME, else .dagster_home in the repo)")
    parser.add_argument("--storage-root", default=None,
                        help="where assets are written (default: the profile's orchestration.storage_root)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: the profile's tracking.tracking_uri, sqlite:///mlflow.db)")


def run(args: argparse.Namespace, config) -> int:
    command = [sys.executable, "-m", "orchestration.demo", "--profile", config.profile]
    for flag, value, is_path in (("--config", args.config, True), ("--dagster-home", args.dagster_home, True),
                                 ("--storage-root", args.storage_root, True), ("--tracking-uri", args.tracking_uri, False)):
        if value:
            # The child runs in the repo root: what the user typed is taken relative to here.
            command += [flag, str(Path(value).resolve()) if is_path else normalize_tracking_uri(value, Path.cwd())]
    return subprocess.call(command, cwd=str(repo_root()))
