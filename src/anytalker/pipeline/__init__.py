"""Generation: the AnyTalker diffusers pipeline and the loading of release downloads."""

from .pipeline_anytalker import AnyTalkerPipeline

__all__ = ["AnyTalkerPipeline"]
