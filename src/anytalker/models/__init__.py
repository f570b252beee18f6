"""AnyTalker's diffusion transformer: Wan2.1 I2V blocks plus audio-face attention."""

from .transformer_anytalker import AnyTalkerTransformer

__all__ = ["AnyTalkerTransformer"]
