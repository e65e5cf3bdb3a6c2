"""Asset code versions: a digest of the source files an asset runs, so the Dagster UI marks an
asset whose code changed since it was materialised."""

import importlib.util
from functools import cache
from pathlib import Path

from flame.digest import Digest


def _sources(module: str) -> list[Path]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(module)
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package: all of its modules
        return sorted(origin.parent.rglob("*.py"))
    return [origin]


@cache
def code_version(*modules: str) -> str:
    """A 12-hex digest of the source of ``modules`` (packages include their submodules)."""
    digest = Digest()
    for module in modules:
        for path in _sources(module):
            digest.add(path.name).add_file(path)
    return digest.hexdigest(12)
