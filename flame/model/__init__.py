"""The image side of FLAME: ``FlameModel`` and ``load(path)``."""

from flame.model.flame_model import FlameModel, load

__all__ = ["FlameModel", "load"]
