"""Inference engine: load a model once, generate with the template it was trained with."""

from tunery.serving.engine import Engine, Generation, GenerationConfig

__all__ = ["Engine", "Generation", "GenerationConfig"]
