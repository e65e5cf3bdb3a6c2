"""Training the image tower against stored text embeddings: ``run_training``."""

from flame.train.loop import run_training

__all__ = ["run_training"]
