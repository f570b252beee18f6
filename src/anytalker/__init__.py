"""AnyTalker: audio-driven multi-person talking-video generation on diffusers."""

__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import anytalker` stays cheap for the CLI's argument parsing
    if name == "AnyTalkerTransformer":
        from .models import AnyTalkerTransformer

        return AnyTalkerTransformer
    if name == "AnyTalkerPipeline":
        from .pipeline import AnyTalkerPipeline

        return AnyTalkerPipeline
    raise AttributeError(f"module 'anytalker' has no attribute {name!r}")
