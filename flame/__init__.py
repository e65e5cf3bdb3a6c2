"""FLAME: frozen-LLM language-image pre-training, as a library.

Subpackages: ``flame.text`` (frozen LLM, facet-decoupled embeddings, store),
``flame.data`` (img2dataset ingestion, shard reading), ``flame.model`` (image
tower, FlameModel), ``flame.train`` (losses, loop, checkpoints), ``flame.tracking``.
"""

__version__ = "0.1.0"
