"""The trainable model: ``FlameModel`` (image tower, text tower by text mode, logit scale and
bias), ``load(path)`` for a checkpoint folder, the image transforms and zero-shot scoring."""

from flame.model.flame_model import FlameModel, load

__all__ = ["FlameModel", "load"]
