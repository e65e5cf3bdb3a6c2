"""The layers of docs/ARCHITECTURE.md hold: no import loop between the project's modules, and
imports only point down, lowest layer first:

    flame (the library core) < evaluations < flame.app (the application) < orchestration

so the library never imports the application, evaluations or orchestration; evaluations never
imports the application, the MLflow registry or orchestration; nothing imports orchestration.

Imports are read from the source with ``ast`` (``flame.mlflow.standalone.imported_names``, which
also finds what a logged model must carry), at module level and inside functions alike: a lazy
import is a dependency all the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from flame.mlflow.standalone import imported_names

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flame", "evaluations", "orchestration")
APPLICATION = ("flame.app", "flame.__main__")
LAYERS = ("flame", "evaluations", "flame.app", "orchestration")
ORCHESTRATION_ONLY = {"dagster", "dagster_pipes", "dagster_webserver", "dvc"}


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> str:
    if _in(module, "orchestration"):
        return "orchestration"
    if _in(module, *APPLICATION):
        return "flame.app"
    return "evaluations" if _in(module, "evaluations") else "flame"


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def import_graph(root: Path, packages=PACKAGES) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between project modules, top-level third-party packages each module imports)."""
    modules = module_files(root, packages)
    edges, external = {}, {}
    for module, path in modules.items():
        names = imported_names(path, module, modules.__contains__)
        edges[module] = {n for n in names if n in modules and n != module}
        external[module] = {n.split(".")[0] for n in names if n.split(".")[0] not in packages}
    return edges, external


def upward(edges: dict[str, set[str]]) -> dict[str, list[str]]:
    """Each module's imports of a higher layer (see LAYERS)."""
    found = {m: sorted(t for t in targets if LAYERS.index(layer_of(t)) > LAYERS.index(layer_of(m)))
             for m, targets in edges.items()}
    return {m: t for m, t in found.items() if t}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph(REPO)


def test_no_import_loop_between_project_modules(graph):
    edges, _ = graph
    assert cycles(edges) == []


def test_imports_only_point_down_the_layers(graph):
    edges, _ = graph
    assert upward(edges) == {}


def test_the_library_never_imports_the_application(graph):
    edges, _ = graph
    wrong = {m: sorted(t for t in targets if _in(t, *APPLICATION))
             for m, targets in edges.items() if layer_of(m) in ("flame", "evaluations")}
    assert {m: t for m, t in wrong.items() if t} == {}


def test_evaluations_never_import_the_registry_or_the_application(graph):
    edges, _ = graph
    wrong = {m: sorted(t for t in targets if _in(t, "flame.mlflow", *APPLICATION, "orchestration"))
             for m, targets in edges.items() if _in(m, "evaluations")}
    assert {m: t for m, t in wrong.items() if t} == {}


def test_library_is_free_of_dagster_and_dvc(graph):
    _, external = graph
    wrong = {m: sorted(pkgs & ORCHESTRATION_ONLY) for m, pkgs in external.items() if _in(m, "flame", "evaluations")}
    assert {m: p for m, p in wrong.items() if p} == {}


def test_mlflow_is_imported_only_by_flame_mlflow(graph):
    _, external = graph
    users = sorted(m for m, pkgs in external.items() if _in(m, "flame", "evaluations") and "mlflow" in pkgs)
    assert users and all(_in(m, "flame.mlflow") for m in users), users


def test_the_checks_catch_a_lazy_loop_and_every_upward_import(tmp_path):
    """The checks above on a small tree made to break them."""
    files = {
        "flame/__init__.py": "",
        "flame/a.py": "from flame.b import thing\n",
        "flame/b.py": "def thing():\n    from flame import a  # lazy, still a loop\n    import orchestration.jobs\n",
        "flame/c.py": "from . import b\nimport evaluations.runner\n",
        "flame/app/__init__.py": "",
        "flame/app/cli.py": "import flame.a\n",
        "evaluations/__init__.py": "",
        "evaluations/runner.py": "import dvc.repo\nfrom flame.app import cli\nimport flame.mlflow.registry\n",
        "flame/mlflow/__init__.py": "",
        "flame/mlflow/registry.py": "import mlflow\n",
        "orchestration/__init__.py": "",
        "orchestration/jobs.py": "import dagster\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    edges, external = import_graph(tmp_path)
    assert cycles(edges) == [["flame.a", "flame.b"]]
    assert edges["flame.c"] == {"flame.b", "evaluations.runner"}
    assert upward(edges) == {"flame.b": ["orchestration.jobs"], "flame.c": ["evaluations.runner"],
                             "evaluations.runner": ["flame.app.cli"]}
    assert external["evaluations.runner"] == {"dvc"} and external["orchestration.jobs"] == {"dagster"}
