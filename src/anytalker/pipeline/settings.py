"""Typed settings of generation: how the model is set up and how it samples.

Every surface (CLI, bench, app, REST server, training validation, the puppets recipe) builds
these objects, and `validate()` is the one place the rules live: the pipeline's `check_inputs`
calls the same code, so a rule cannot be checked in one home and forgotten in another.
Errors name the field as the caller spells it (`label`), e.g. `--steps` for the CLI.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
VARIANTS = ("1.3B", "14B")
SCHEDULERS = ("unipc", "euler")
SPATIAL_MULTIPLE = 16  # VAE stride 8 x patch 2
TEMPORAL_STRIDE = 4
QUANTIZATIONS = ("fp8-storage", "int8", "fp8")  # layerwise fp8 storage; torchao int8 / fp8 weight-only
OFFLOADS = ("model", "block", "leaf")  # model CPU offload; group offload by block or by leaf module
CACHES = ("first-block", "magcache", "taylorseer", "teacache")
# Presets fill what the user left unset: sampling defaults, and the scheduler and flow shift where those
# are the library's defaults (unipc, no --flow-shift). few-step: distillation LoRAs (LightX2V / CausVid
# style) sample 4 steps without guidance on flow-match Euler with a larger shift.
PRESETS = {"few-step": {"sampling": {"steps": 4, "guidance_scale": 1.0}, "scheduler": "euler", "flow_shift": 5.0}}

Label = Callable[[str], str]


def plain_label(name: str) -> str:
    """How the library names a field in an error: as the dataclass spells it."""
    return name


def flag_label(name: str) -> str:
    """`max_frames_per_window` -> `--max-frames-per-window`: how the CLI names a field."""
    return "--" + name.replace("_", "-")


class SettingsError(ValueError):
    """A setting that cannot be used; `field` names it (as the dataclass spells it)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def parse_size(text: str, label: str = "size") -> tuple[int, int]:
    """"HxW" (pixels) -> (height, width); the values are checked by `SamplingSettings.validate`."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SettingsError("size", f"{label} {text!r}: expected HxW in pixels, e.g. 480x832") from None
    return height, width


def check_window(max_frames: int, motion_frames: int, label: Label = plain_label) -> None:
    """Long-video windows: both lengths 4n+1 (the VAE's temporal stride), the carried frames fewer."""
    for name, value in (("max_frames_per_window", max_frames), ("motion_frames", motion_frames)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (value - 1) % TEMPORAL_STRIDE:
            raise SettingsError(name, f"{label(name)} must be 4n+1 (1, 5, 9, ...), got {value}")
    if motion_frames >= max_frames:
        raise SettingsError("motion_frames", f"{label('motion_frames')} ({motion_frames}) must be smaller than "
                                             f"{label('max_frames_per_window')} ({max_frames})")


@dataclass(frozen=True)
class ModelSettings:
    """Which model, and how the pipeline is set up on this machine.

    model: a release download folder, a diffusers-format folder (`anytalker convert` output),
    `random-tiny` (random toy weights, noise out) or `puppets-tiny` (the bundled puppet model).
    """

    model: str = "checkpoints"
    variant: str = "1.3B"
    dtype: str | None = None  # bf16 | fp16 | fp32; default bf16 on a GPU, fp32 on the CPU
    cpu_offload: bool = False
    scheduler: str = "unipc"
    flow_shift: float | None = None  # default: the release's 3.0
    seed: int = 0  # random-tiny's weights
    speed: "SpeedSettings | None" = None  # attention backend, LoRA, quantization, offload, compile, caches

    def validate(self, label: Label = plain_label) -> "ModelSettings":
        if not self.model:
            raise SettingsError("model", f"{label('model')} is empty: name a model folder, random-tiny or puppets-tiny")
        if self.variant not in VARIANTS:
            raise SettingsError("variant", f"{label('variant')} {self.variant!r}: choose {' or '.join(VARIANTS)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise SettingsError("dtype", f"{label('dtype')} {self.dtype!r}: choose from {', '.join(DTYPES)}")
        if self.scheduler not in SCHEDULERS:
            raise SettingsError("scheduler", f"{label('scheduler')} {self.scheduler!r}: choose from "
                                             f"{', '.join(SCHEDULERS)}")
        if self.flow_shift is not None and not self.flow_shift > 0:
            raise SettingsError("flow_shift", f"{label('flow_shift')} must be positive, got {self.flow_shift}")
        if self.cpu_offload:
            import torch

            if not torch.cuda.is_available():
                raise SettingsError("cpu_offload", f"{label('cpu_offload')} needs a GPU (idle components wait in "
                                                   "CPU memory while one runs on the GPU)")
        if self.speed is not None:
            self.speed.validate(label)
            if self.cpu_offload and self.speed.offload not in (None, "model"):
                raise SettingsError("offload", f"{label('cpu_offload')} and {label('offload')} "
                                               f"{self.speed.offload}: choose one way of offloading")
        return self

    @property
    def offload(self) -> str | None:
        """How weights are offloaded: "model" (cpu_offload), "block" / "leaf" (group offload) or None."""
        return "model" if self.cpu_offload else (self.speed.offload if self.speed else None)

    def resolved_scheduler(self) -> tuple[str, float | None]:
        """(scheduler, flow_shift) with a speed preset's values where these are left at the defaults
        (scheduler unipc, no flow_shift)."""
        preset = PRESETS.get(self.speed.preset) if self.speed and self.speed.preset else None
        if preset is None:
            return self.scheduler, self.flow_shift
        scheduler = preset["scheduler"] if self.scheduler == "unipc" else self.scheduler
        return scheduler, self.flow_shift if self.flow_shift is not None else preset["flow_shift"]


@dataclass(frozen=True)
class SpeedSettings:
    """The speed stack (`anytalker.acceleration`), applied by `runner.load_pipeline`; None/empty = off.

    attention_backend: diffusers' attention backend (`native`, `flash`, `_flash_3`, `sage`, ...;
        `acceleration.backends.backend_choices()`), checked to be installed before weights load.
    lora: (file, scale) pairs: Wan-original, musubi or diffusers key layouts; fuse_lora merges them
        into the weights (unfuse with `acceleration.lora.unfuse_loras`). preset: `few-step`.
    quantize: `fp8-storage` (fp8 weights, upcast per layer), `int8` / `fp8` (torchao weight-only).
    offload: `model` (CPU offload), `block` / `leaf` (group offload; offload_blocks blocks a group).
    compile: regional torch.compile of the repeated transformer blocks.
    cache: `first-block`, `magcache`, `taylorseer` or `teacache` step caching; cache_threshold
        (first-block / magcache / teacache), cache_interval (taylorseer), cache_warmup (steps always
        computed first), cache_patterns (taylorseer's module regexes), cache_calibration (a name in
        the model folder or a JSON file from `anytalker calibrate-cache`; magcache / teacache).
    """

    attention_backend: str | None = None
    lora: tuple[tuple[str, float], ...] = ()
    fuse_lora: bool = True
    preset: str | None = None
    quantize: str | None = None
    offload: str | None = None
    offload_blocks: int = 1
    compile: bool = False
    cache: str | None = None
    cache_threshold: float | None = None
    cache_interval: int | None = None
    cache_warmup: int | None = None
    cache_patterns: tuple[str, ...] | None = None
    cache_calibration: str | None = None

    def validate(self, label: Label = plain_label) -> "SpeedSettings":
        from pathlib import Path

        from ..acceleration import backends

        if self.attention_backend is not None:
            problem = backends.backend_problem(self.attention_backend)
            if problem:
                raise SettingsError("attention_backend", f"{label('attention_backend')} {self.attention_backend}: "
                                                         f"{problem}")
        for path, scale in self.lora:
            if not Path(path).is_file():
                raise SettingsError("lora", f"{label('lora')} {path}: no such file")
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
                raise SettingsError("lora", f"{label('lora')} {path}: scale must be a finite number, got {scale!r}")
        choices = (("preset", PRESETS), ("quantize", QUANTIZATIONS), ("offload", OFFLOADS), ("cache", CACHES))
        for name, allowed in choices:
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise SettingsError(name, f"{label(name)} {value!r}: choose from {', '.join(allowed)}")
        if self.quantize in ("int8", "fp8"):
            from ..acceleration.quantization import torchao_problem

            problem = torchao_problem()
            if problem:
                raise SettingsError("quantize", f"{label('quantize')} {self.quantize}: {problem}")
        if self.lora and self.quantize and not self.fuse_lora:
            raise SettingsError("fuse_lora", f"{label('lora')} with {label('quantize')} needs fused LoRAs (they are "
                                             f"merged before the weights are quantized)")
        if self.offload == "model":
            import torch

            if not torch.cuda.is_available():
                raise SettingsError("offload", f"{label('offload')} model needs a GPU")
        if isinstance(self.offload_blocks, bool) or not isinstance(self.offload_blocks, int) or self.offload_blocks < 1:
            raise SettingsError("offload_blocks", f"{label('offload_blocks')} must be >= 1, got {self.offload_blocks}")
        if self.cache_threshold is not None and not self.cache_threshold > 0:
            raise SettingsError("cache_threshold", f"{label('cache_threshold')} must be positive, "
                                                   f"got {self.cache_threshold}")
        for name, least in (("cache_interval", 1), ("cache_warmup", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise SettingsError(name, f"{label(name)} must be an integer >= {least}, got {value}")
        for pattern in self.cache_patterns or ():
            try:
                re.compile(pattern)
            except re.error as problem:
                raise SettingsError("cache_patterns", f"{label('cache_patterns')} {pattern!r}: {problem}") from None
        tuning = [name for name in ("cache_threshold", "cache_interval", "cache_warmup", "cache_patterns",
                                    "cache_calibration") if getattr(self, name) is not None]
        if tuning and self.cache is None:
            raise SettingsError(tuning[0], f"{label(tuning[0])} needs {label('cache')}")
        calibration = self.cache_calibration
        if calibration and (calibration.endswith(".json") or "/" in calibration) and not Path(calibration).is_file():
            raise SettingsError("cache_calibration", f"{label('cache_calibration')} {calibration}: no such file")
        return self


def parse_lora(text: str, label: str = "--lora") -> tuple[str, float]:
    """"FILE[:SCALE]" -> (file, scale); scale 1 when not given."""
    path, sep, scale = text.rpartition(":")
    if not sep or not path:
        return text, 1.0
    try:
        return path, float(scale)
    except ValueError:
        return text, 1.0  # a path with a colon in it


@dataclass(frozen=True)
class SamplingSettings:
    """How one video is sampled. `None` means "the model's default" (`with_defaults`; see
    `anytalker.pipeline.runner.model_defaults`: 40 steps, guidance 4.5, windows of 81 frames at the
    release's 480x832 pixel budget; random-tiny samples 4 steps at 32x48)."""

    size: tuple[int, int] | None = None  # (height, width) in pixels; default: the image's aspect at `area`
    area: int | None = None  # pixel budget when `size` is not given
    fps: int = 24
    steps: int | None = None
    guidance_scale: float | None = None
    audio_guidance_scale: float | None = None  # separate audio scale: 3 passes per step
    max_frames_per_window: int | None = None
    motion_frames: int = 5
    seed: int = 0
    negative_prompt: str | None = None  # default: Wan2.1's negative prompt

    def with_defaults(self, **defaults) -> "SamplingSettings":
        """A copy with every field that is None taken from `defaults` (those set stay)."""
        unknown = set(defaults) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown sampling settings: {sorted(unknown)}")
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def validate(self, label: Label = plain_label) -> "SamplingSettings":
        """Checks what is set (None fields are checked once the model's defaults fill them)."""
        if self.size is not None:
            height, width = self.size
            if height <= 0 or width <= 0 or height % SPATIAL_MULTIPLE or width % SPATIAL_MULTIPLE:
                raise SettingsError("size", f"{label('size')} {height}x{width}: height and width must be positive "
                                            f"multiples of {SPATIAL_MULTIPLE}")
        if self.area is not None and self.area < SPATIAL_MULTIPLE ** 2:
            raise SettingsError("area", f"{label('area')} must be at least {SPATIAL_MULTIPLE ** 2} pixels")
        check_window(self.max_frames_per_window or max(81, self.motion_frames + TEMPORAL_STRIDE), self.motion_frames,
                     label)
        steps = 1 if self.steps is None else self.steps
        if steps < 1 or self.fps < 1:
            raise SettingsError("steps" if steps < 1 else "fps", f"{label('steps')} and {label('fps')} must be >= 1, "
                                                                 f"got {self.steps} and {self.fps}")
        for name in ("guidance_scale", "audio_guidance_scale"):
            value = getattr(self, name)
            if value is not None and not value >= 1:
                raise SettingsError(name, f"{label(name)} must be >= 1, got {value}")
        return self


@dataclass(frozen=True)
class InputSettings:
    """How user inputs become the model's: face order, detectors, loudness, vocal separation."""

    order: str = "left-to-right"  # how detected faces meet the tracks
    detectors: tuple[str, ...] | None = None  # default chain: see anytalker.faces.detection
    loudness_lufs: float | None = None
    separator: str | None = None  # TorchScript vocal-separation model (anytalker.audio.separation)

    def validate(self, label: Label = plain_label) -> "InputSettings":
        from ..faces.detection import ORDERS

        if self.order not in ORDERS:
            raise SettingsError("order", f"{label('order')} {self.order!r}: choose from {', '.join(ORDERS)}")
        if self.detectors is not None and not all(self.detectors):
            raise SettingsError("detectors", f"{label('detectors')}: empty detector name in {self.detectors}")
        return self
