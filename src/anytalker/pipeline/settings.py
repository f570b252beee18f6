"""Typed settings of generation: how the model is set up and how it samples.

Every surface (CLI, bench, app, REST server, training validation, the puppets recipe) builds
these objects, and `validate()` is the one place the rules live: the pipeline's `check_inputs`
calls the same code, so a rule cannot be checked in one home and forgotten in another.
Errors name the field as the caller spells it (`label`), e.g. `--steps` for the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
VARIANTS = ("1.3B", "14B")
SCHEDULERS = ("unipc", "euler")
SPATIAL_MULTIPLE = 16  # VAE stride 8 x patch 2
TEMPORAL_STRIDE = 4

Label = Callable[[str], str]


def _plain(name: str) -> str:
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


def check_window(max_frames: int, motion_frames: int, label: Label = _plain) -> None:
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

    def validate(self, label: Label = _plain) -> "ModelSettings":
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
        return self


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

    def validate(self, label: Label = _plain) -> "SamplingSettings":
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

    def validate(self, label: Label = _plain) -> "InputSettings":
        from ..faces.detection import ORDERS

        if self.order not in ORDERS:
            raise SettingsError("order", f"{label('order')} {self.order!r}: choose from {', '.join(ORDERS)}")
        if self.detectors is not None and not all(self.detectors):
            raise SettingsError("detectors", f"{label('detectors')}: empty detector name in {self.detectors}")
        return self
