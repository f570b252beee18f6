"""AnyTalker: audio-driven multi-person talking-video generation on diffusers."""

__version__ = "0.1.0"
