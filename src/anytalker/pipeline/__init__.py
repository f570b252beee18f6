"""Generation: the one API (`runner`, `settings`), the AnyTalker diffusers pipeline and the loading
of release downloads.

`AnyTalkerPipeline` is imported on first use: the CLI's argument parsing reads `settings` without
paying for torch and diffusers.
"""

__all__ = ["AnyTalkerPipeline"]


def __getattr__(name):
    if name == "AnyTalkerPipeline":
        from .pipeline_anytalker import AnyTalkerPipeline

        return AnyTalkerPipeline
    raise AttributeError(f"module 'anytalker.pipeline' has no attribute {name!r}")
