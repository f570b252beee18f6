"""The speed stack applied in order to a built pipeline (`pipeline.runner.load_pipeline` calls it):
LoRAs (fused) -> placement or offload -> weight quantization -> attention backend -> regional
compile; the step cache is resolved here and enabled per video (its MagCache ratios depend on the
step count)."""

from __future__ import annotations

import os

from .backends import apply_attention_backend
from .caches import CacheSetup, cache_setup
from .compile import compile_blocks
from .lora import bake_loras, load_loras
from .quantization import apply_offload, quantize_weights


def apply_speed(pipe, settings, device: str, model_folder: str | os.PathLike | None = None,
                log=None) -> tuple[dict, CacheSetup | None]:
    """Applies `settings.speed` (a ModelSettings' SpeedSettings; None = plain) and places the
    components on `device` (or offloads them). Returns (what was applied, for the sidecar; the
    resolved step cache or None)."""
    speed = settings.speed
    offload = settings.offload
    if speed is None:
        apply_offload(pipe, offload, device)
        return {}, None
    transformer = pipe.transformer
    cache = cache_setup(speed, model_folder)  # a missing calibration fails before any weight work
    applied: dict = {}
    if speed.lora:
        reports = load_loras(transformer, speed.lora, fuse=speed.fuse_lora, log=log)
        applied["lora"] = [{"file": r.path, "scale": r.scale, "layout": r.layout, "modules": r.modules,
                            "keys_matched": r.keys_matched, "keys_total": r.keys_total} for r in reports]
        if speed.quantize:
            bake_loras(transformer)  # quantized layers are plain layers holding the merged weights
    if offload is None:
        apply_offload(pipe, None, device)
        applied.update(quantize_weights(transformer, speed.quantize, transformer.dtype))
    else:  # quantize before the weights are split into offloaded groups
        applied.update(quantize_weights(transformer, speed.quantize, transformer.dtype))
        apply_offload(pipe, offload, device, speed.offload_blocks)
        applied["offload"] = offload
    if speed.attention_backend:
        apply_attention_backend(transformer, speed.attention_backend)
        applied["attention_backend"] = speed.attention_backend
    if speed.compile:
        applied.update(compile_blocks(transformer))
    if speed.preset:
        applied["preset"] = speed.preset
    return applied, cache
