"""Training a FlameModel (``run_training``): the loop, its text modes, batches and optimiser."""

from flame.train.loop import run_training

__all__ = ["run_training"]
