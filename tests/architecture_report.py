"""The shape of the code, as numbers: ``python tests/architecture_report.py [REPO]`` prints one
JSON object with the modules of each top-level folder, the import loops between modules, the
imports that run back up between the top-level folders (against ``LAYERS``, lowest first), and
the lines of code per folder. Imports are read as ``tests/test_architecture.py`` reads them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``tests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_architecture import LAYERS, PACKAGES, cycles, import_graph, layer_of, module_files  # noqa: E402

FOLDERS = ("flame", "evaluations", "orchestration", "benchmarks", "tests")


def lines_per_folder(repo: Path) -> dict[str, int]:
    return {folder: sum(len(p.read_text(encoding="utf-8").splitlines()) for p in sorted((repo / folder).rglob("*.py")))
            for folder in FOLDERS if (repo / folder).is_dir()}


def report(repo: Path) -> dict:
    edges, _ = import_graph(repo)
    modules = module_files(repo)
    upward = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                    if LAYERS.index(layer_of(b)) > LAYERS.index(layer_of(a)))
    return {
        "modules": {p: sum(1 for m in modules if m == p or m.startswith(p + ".")) for p in PACKAGES},
        "import_edges": sum(len(t) for t in edges.values()),
        "loops": cycles(edges),
        "imports_running_back_up": upward,
        "lines": lines_per_folder(repo),
    }


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    print(json.dumps(report(root.resolve()), indent=2))
