"""The trainable model: ``FlameModel`` (image tower, text tower by text mode, logit scale and
bias) built from one ``ModelConfig`` (which its checkpoint's ``model_config.json`` records),
``load(path)`` for a checkpoint folder, ``read_config(path)`` for its config alone, the image
transforms and zero-shot scoring."""

from flame.model.config import ModelConfig, read_config
from flame.model.flame_model import FlameModel, load

__all__ = ["FlameModel", "ModelConfig", "load", "read_config"]
