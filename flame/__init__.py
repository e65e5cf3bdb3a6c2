"""FLAME: frozen-LLM language-image pre-training, as a library.

Its public face, imported on first use so that ``import flame.config`` stays light:

- ``flame.load(path) -> FlameModel``: a trained checkpoint folder;
- ``flame.load_encoder(profile_or_path) -> TextEncoder``: the frozen LLM with its prompts;
- ``flame.load_config(path=None, profile=None) -> FlameConfig``: one profile of params.yaml.

Packages: ``flame.config`` (the typed schema and params.yaml), ``flame.text`` (frozen LLM,
facet-decoupled prompts, embedding store), ``flame.data`` (manifests, img2dataset ingestion,
data shards, the image reader), ``flame.text_modes`` (the text side of a model, one registry),
``flame.model`` (FlameModel from its ModelConfig, image tower, transforms, zero-shot),
``flame.train`` (the loop, losses, the training identity, tracked training),
``flame.checkpoint`` (the folder layout), ``flame.storage`` (the pipeline's storage layout),
``flame.tracking`` and ``flame.mlflow`` (tracking, pyfunc, the registry). The application
(``flame.app``: the command line, the pipeline's steps, the promotion gate) sits on top and
also drives ``evaluations``; nothing else in ``flame`` imports it.
"""

__version__ = "0.1.0"
__all__ = ["FlameModel", "load", "load_config", "load_encoder"]


def __getattr__(name: str):
    if name in ("FlameModel", "load"):
        import flame.model

        return getattr(flame.model, name)
    if name == "load_encoder":
        from flame.text import load_encoder

        return load_encoder
    if name == "load_config":
        from flame.config import load_config

        return load_config
    raise AttributeError(f"module 'flame' has no attribute {name!r}")
