"""The layers of docs/ARCHITECTURE.md hold: no import loop between the project's modules,
and imports only go down (the library never imports its users).

Imports are read from the source with ``ast``, at module level and inside functions alike:
a lazy import is a dependency all the same."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flame", "evaluations", "orchestration")
# The command line sits above both the library core and the evaluations it drives.
CLI_LAYER = ("flame.app", "flame.__main__")
ORCHESTRATION_ONLY = {"dagster", "dagster_pipes", "dagster_webserver", "dvc"}


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imported_names(path: Path, module: str, modules) -> set[str]:
    """Every module name ``path`` imports (absolute; relative imports resolved). ``from a
    import b`` names ``a.b`` when that is a module of ``modules``, else ``a``."""
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = parts[: len(parts) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            for alias in node.names:
                full = f"{prefix}.{alias.name}"
                names.add(full if full in modules else prefix)
    return names


def import_graph(root: Path, packages=PACKAGES) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between project modules, top-level third-party packages each module imports)."""
    modules = module_files(root, packages)
    edges, external = {}, {}
    for module, path in modules.items():
        names = imported_names(path, module, modules)
        edges[module] = {n for n in names if n in modules and n != module}
        external[module] = {n.split(".")[0] for n in names if n.split(".")[0] not in packages}
    return edges, external


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


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.fixture(scope="module")
def graph():
    return import_graph(REPO)


def test_no_import_loop_between_project_modules(graph):
    edges, _ = graph
    assert cycles(edges) == []


def test_library_and_evaluations_never_import_orchestration(graph):
    edges, _ = graph
    wrong = {m: sorted(t for t in targets if _in(t, "orchestration"))
             for m, targets in edges.items() if _in(m, "flame", "evaluations")}
    assert {m: t for m, t in wrong.items() if t} == {}


def test_library_core_never_imports_evaluations(graph):
    edges, _ = graph
    wrong = {m: sorted(t for t in targets if _in(t, "evaluations"))
             for m, targets in edges.items() if _in(m, "flame") and not _in(m, *CLI_LAYER)}
    assert {m: t for m, t in wrong.items() if t} == {}


def test_library_is_free_of_dagster_and_dvc(graph):
    _, external = graph
    wrong = {m: sorted(pkgs & ORCHESTRATION_ONLY) for m, pkgs in external.items() if _in(m, "flame", "evaluations")}
    assert {m: p for m, p in wrong.items() if p} == {}


def test_mlflow_is_imported_only_by_flame_mlflow(graph):
    _, external = graph
    users = sorted(m for m, pkgs in external.items() if _in(m, "flame") and "mlflow" in pkgs)
    assert users and all(_in(m, "flame.mlflow") for m in users), users


def test_the_checks_catch_a_lazy_loop_and_an_upward_import(tmp_path):
    """The checks above on a small tree made to break them."""
    files = {
        "flame/__init__.py": "",
        "flame/a.py": "from flame.b import thing\n",
        "flame/b.py": "def thing():\n    from flame import a  # lazy, still a loop\n    import orchestration.jobs\n",
        "flame/c.py": "from . import b\nimport evaluations.runner\n",
        "evaluations/__init__.py": "",
        "evaluations/runner.py": "import dvc.repo\n",
        "orchestration/__init__.py": "",
        "orchestration/jobs.py": "import dagster\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    edges, external = import_graph(tmp_path)
    assert cycles(edges) == [["flame.a", "flame.b"]]
    assert "orchestration.jobs" in edges["flame.b"]
    assert edges["flame.c"] == {"flame.b", "evaluations.runner"}
    assert external["evaluations.runner"] == {"dvc"} and external["orchestration.jobs"] == {"dagster"}
