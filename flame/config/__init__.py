"""The one typed configuration schema, fed by ``params.yaml``.

- ``flame.config.schema``: the sections and ``FlameConfig``, their constants, ``ConfigError``;
- ``flame.config.loading``: ``params.yaml`` read, its profiles and ``extends`` merged, the
  result validated (errors name the key, with a did-you-mean) and its relative paths resolved:
  ``load_config(path, profile, overrides)``; ``resolved_yaml`` writes one profile out resolved.
"""

from flame.config.loading import (
    deep_merge,
    default_params_path,
    did_you_mean,
    load_config,
    profile_names,
    read_params,
    repo_root,
    resolve_relative_paths,
    resolved_yaml,
)
from flame.config.schema import (
    BOS_PLACEHOLDER,
    CAPTION_PLACEHOLDER,
    LONG_FACET_SET,
    RAW_FACET_SET,
    REFERENCE_LOGIT_INIT,
    ClipTextConfig,
    ConfigError,
    DataConfig,
    EvalConfig,
    FacetSet,
    FlameConfig,
    ImageConfig,
    OrchestrationConfig,
    RegistryConfig,
    TextConfig,
    TextView,
    TrackingConfig,
    TrainConfig,
    flatten,
    reference_logit_init,
)

__all__ = [
    "BOS_PLACEHOLDER", "CAPTION_PLACEHOLDER", "LONG_FACET_SET", "RAW_FACET_SET", "REFERENCE_LOGIT_INIT",
    "ClipTextConfig", "ConfigError", "DataConfig", "EvalConfig", "FacetSet", "FlameConfig", "ImageConfig",
    "OrchestrationConfig", "RegistryConfig", "TextConfig", "TextView", "TrackingConfig", "TrainConfig",
    "deep_merge", "default_params_path", "did_you_mean", "flatten", "load_config", "profile_names",
    "read_params", "reference_logit_init", "repo_root", "resolve_relative_paths", "resolved_yaml",
]
