"""Loading the configuration: ``params.yaml`` to a validated ``FlameConfig``.

``params.yaml`` holds ``profile`` (the default profile name) and ``profiles``: a
mapping of name -> partial configuration. A profile may name a parent with
``extends``; values are deep-merged over the parent, then over the schema's
defaults. Unknown keys and bad values fail fast with the dotted key at fault (and the
known key an unknown one is close to). Relative paths of the configuration are taken
relative to the folder of the params file (see ``resolve_relative_paths``).
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from flame.config.schema import ConfigError, FlameConfig
from flame.paths import normalize_tracking_uri, resolve_path


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_params_path() -> Path:
    """``$FLAME_CONFIG``, else ``./params.yaml``, else the project's own ``params.yaml``."""
    env = os.environ.get("FLAME_CONFIG")
    if env:
        return Path(env)
    local = Path("params.yaml")
    if local.exists():
        return local
    return repo_root() / "params.yaml"


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# The keys of params.yaml itself; everything else lives inside a profile.
PARAMS_KEYS = ("profile", "profiles")


def did_you_mean(word: str, known) -> str:
    """``"; did you mean 'X'?"`` for the known name closest to ``word``, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def read_params(path: str | Path | None = None) -> dict:
    path = Path(path) if path else default_params_path()
    if not path.exists():
        raise ConfigError(f"configuration file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text YAML file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    for key in data if isinstance(data, dict) else ():
        if key not in PARAMS_KEYS:
            raise ConfigError(f"{path}: unknown top-level key {key!r} (a params file holds only "
                              f"{' and '.join(map(repr, PARAMS_KEYS))}){did_you_mean(key, PARAMS_KEYS)}")
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'profiles' mapping")
    if "profile" in data and not isinstance(data["profile"], str):
        raise ConfigError(f"{path}: profile must be a profile name (got {data['profile']!r})")
    return data


def profile_names(path: str | Path | None = None) -> list[str]:
    return sorted(read_params(path)["profiles"])


def _resolve_profile(profiles: dict, name: str, path: Path, chain: tuple[str, ...] = ()) -> dict:
    if name not in profiles:
        where = f"profiles.{chain[-1]}.extends: " if chain else ""
        raise ConfigError(f"{path}: {where}unknown profile {name!r} (known profiles: {sorted(profiles)})"
                          f"{did_you_mean(name, profiles)}")
    if name in chain:
        raise ConfigError(f"{path}: profiles.{name}.extends forms a cycle: {' -> '.join(chain + (name,))}")
    raw = profiles[name] or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: profiles.{name} must be a mapping")
    raw = dict(raw)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    return deep_merge(_resolve_profile(profiles, parent, path, chain + (name,)), raw)


def _unwrap(annotation: Any) -> Any:
    """The model class inside ``X | None`` (or the annotation itself)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _keys_known_at(loc: tuple) -> list[str]:
    """The keys the schema accepts in the mapping at ``loc`` (a pydantic error location)."""
    node: Any = FlameConfig
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            if field is None:
                return []
            node = field.annotation
        elif get_origin(node) in (dict, list):
            node = get_args(node)[-1]  # a dict's values, a list's items
        else:
            return []
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        known = list(node.model_fields)
        return known + ["extends"] if node is FlameConfig else known
    return []


def _format_validation_error(exc: ValidationError, path: Path, profile: str) -> str:
    lines = [f"{path}: invalid configuration for profile {profile!r}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = err.get("input")
        got_txt = "" if isinstance(got, dict) else f" (got {got!r})"
        hint = ""
        if err["type"] == "extra_forbidden" and err["loc"]:
            hint = did_you_mean(err["loc"][-1], _keys_known_at(err["loc"][:-1]))
        lines.append(f"  {key}: {err['msg']}{got_txt}{hint}")
    return "\n".join(lines)


def resolve_relative_paths(config: FlameConfig, base: str | Path) -> FlameConfig:
    """``config`` with every relative path setting made absolute against ``base`` (the params
    file's folder), in place: the tracking URI, the LLM cache folder, the storage root, the
    incoming folder and the manifests. Nothing is read from the current folder."""
    config.tracking.tracking_uri = normalize_tracking_uri(config.tracking.tracking_uri, base)
    if config.text.cache_dir:
        config.text.cache_dir = resolve_path(config.text.cache_dir, base)
    orchestration = config.orchestration
    orchestration.storage_root = resolve_path(orchestration.storage_root, base)
    orchestration.incoming_dir = resolve_path(orchestration.incoming_dir, base)
    orchestration.manifests = [resolve_path(m, base) for m in orchestration.manifests]
    return config


def load_config(
    path: str | Path | None = None,
    profile: str | None = None,
    overrides: dict | None = None,
    resolve_paths: bool = True,
) -> FlameConfig:
    """Load and validate one profile of ``params.yaml`` (with optional nested overrides).

    Relative paths are made absolute against the params file's folder, unless
    ``resolve_paths`` is false (the values as written, e.g. for ``flame config``)."""
    path = Path(path) if path else default_params_path()
    params = read_params(path)
    name = profile or os.environ.get("FLAME_PROFILE") or params.get("profile") or "tiny"
    raw = _resolve_profile(params["profiles"], name, path)
    if overrides:
        raw = deep_merge(raw, overrides)
    raw["profile"] = name
    try:
        config = FlameConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, path, name)) from None
    return resolve_relative_paths(config, path.resolve().parent) if resolve_paths else config


RESOLVED_HEADER = "# Written by `flame config` (dvc.yaml, stage config) from params.yaml; do not edit.\n"


def resolved_yaml(path: str | Path | None = None, profile: str | None = None) -> str:
    """One profile as flame resolves it (its ``extends`` chain merged, defaults filled in,
    validated) as YAML, paths as written: what dvc.yaml's ``config`` stage writes to
    ``params.resolved.yaml``, committed, so it must read the same in every clone."""
    as_written = load_config(path, profile, resolve_paths=False)
    return RESOLVED_HEADER + yaml.safe_dump(as_written.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
