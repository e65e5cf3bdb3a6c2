"""Training a FlameModel (``run_training``): the loop, its counters, the losses, batches,
optimiser, the distributed collectives and the training's identity (``identity``)."""

from flame.train.loop import run_training

__all__ = ["run_training"]
