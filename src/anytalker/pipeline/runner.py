"""The one generation API every surface calls (CLI, bench, app, REST worker, training validation,
the puppets recipe): load a pipeline from `ModelSettings`, prepare user inputs, `generate` one
video from `SamplingSettings`, write it.

    from anytalker.pipeline.runner import (GenerationTask, InputSettings, ModelSettings,
                                           SamplingSettings, generate, load_pipeline, prepare, write_output)

    model = load_pipeline(ModelSettings("checkpoints"))
    prepared = prepare(GenerationTask("talk", "two.png", ["left.wav", "right.wav"], "Two people talk."))
    result = generate(model, prepared, SamplingSettings(seed=1))
    write_output("talk.mp4", result, prepared)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

import numpy as np

from .settings import DTYPES, InputSettings, ModelSettings, SamplingSettings, SettingsError, plain_label
from .tasks import GenerationTask, PreparedTask, prepare_task, write_result

__all__ = [
    "GenerationCancelled", "GenerationInputs", "GenerationResult", "GenerationTask", "InputSettings",
    "LoadedPipeline", "ModelSettings", "PreparedTask", "SamplingSettings", "SettingsError", "build_pipeline",
    "generate", "load_pipeline", "load_separator", "model_defaults", "prepare", "wrap_pipeline", "write_output",
]

RANDOM_TINY = "random-tiny"
PUPPETS_TINY = "puppets-tiny"
RELEASE_DEFAULTS = {"steps": 40, "guidance_scale": 4.5, "max_frames_per_window": 81, "area": 480 * 832}
# random-tiny produces noise: the release's 480p and 40 steps would take 20+ minutes on 2 cores.
RANDOM_TINY_DEFAULTS = {**RELEASE_DEFAULTS, "steps": 4, "area": 32 * 48}
# puppets-tiny was trained without condition dropout (no unconditional branch to guide with).
PUPPETS_TINY_DEFAULTS = {**RELEASE_DEFAULTS, "steps": 20, "guidance_scale": 1.0}
# In a model folder, next to model_index.json: the sampling defaults the model was made for, e.g.
# {"max_frames_per_window": 49, "steps": 20, "guidance_scale": 1.0} (49: its trained clip length).
GENERATION_DEFAULTS = "generation_defaults.json"


def bundled_puppets_folder() -> Path:
    """The bundled puppets-tiny pipeline folder (package data of anytalker.puppets)."""
    return Path(str(resources.files("anytalker.puppets") / "weights" / PUPPETS_TINY))


def model_defaults(settings: ModelSettings) -> dict:
    """Sampling defaults of a model, known before it loads (they fill `SamplingSettings` Nones):
    the built-in ones, then those its folder records (GENERATION_DEFAULTS, `folder_defaults`); a
    speed preset's (`SpeedSettings.preset`) replace the model's."""
    if settings.model == RANDOM_TINY:
        defaults = dict(RANDOM_TINY_DEFAULTS)
    elif settings.model == PUPPETS_TINY or Path(settings.model).resolve() == bundled_puppets_folder().resolve():
        defaults = dict(PUPPETS_TINY_DEFAULTS)
    else:
        defaults = dict(RELEASE_DEFAULTS)
    if settings.model != RANDOM_TINY:
        defaults.update(folder_defaults(model_folder(settings)))
    if settings.speed is not None and settings.speed.preset:
        from .settings import PRESETS

        defaults.update(PRESETS[settings.speed.preset]["sampling"])
    return defaults


def folder_defaults(folder: str | os.PathLike) -> dict:
    """The sampling defaults a model folder records in GENERATION_DEFAULTS (the puppets recipe's
    export writes them: trained window length, steps, guidance); {} when it has none. Keys that
    are not `SamplingSettings` fields are ignored."""
    import json

    path = Path(folder) / GENERATION_DEFAULTS
    if not path.is_file():
        return {}
    known = {f.name for f in fields(SamplingSettings)}
    return {key: value for key, value in json.loads(path.read_text()).items() if key in known}


def model_folder(settings: ModelSettings) -> Path | None:
    """The folder a model was loaded from (cache calibrations live there); None for random-tiny."""
    if settings.model == RANDOM_TINY:
        return None
    return bundled_puppets_folder() if settings.model == PUPPETS_TINY else Path(settings.model)


@dataclass
class LoadedPipeline:
    """A pipeline ready to sample on `device`, with the settings it was set up from."""

    pipe: object  # AnyTalkerPipeline
    device: str
    settings: ModelSettings
    defaults: dict = field(default_factory=dict)
    speed: dict = field(default_factory=dict)  # what the speed stack applied (anytalker.acceleration)
    cache: object = None  # acceleration.caches.CacheSetup, enabled per video


@dataclass
class GenerationInputs:
    """What the model is given: the reference image, one aligned 16 kHz track per person and
    each person's square face box in image pixels, in track order."""

    image: np.ndarray  # uint8 [H, W, 3]
    tracks: Sequence[np.ndarray]
    boxes: Sequence  # FaceBox per person
    prompt: str = ""


@dataclass
class GenerationResult:
    frames: np.ndarray  # uint8 [F, H, W, 3], as many frames as cover the audio
    info: dict  # settings and timings for the sidecar


class GenerationCancelled(RuntimeError):
    """`should_stop` asked for it; no output was written."""


def _torch_dtype(settings: ModelSettings, device: str):
    import torch

    if settings.dtype:
        return getattr(torch, DTYPES[settings.dtype])
    return torch.bfloat16 if device == "cuda" else torch.float32


def build_pipeline(settings: ModelSettings, device: str | None = None):
    """The AnyTalkerPipeline of `settings.model`, loaded but not moved or configured.

    random-tiny is built in memory; puppets-tiny is the bundled folder; a folder with
    model_index.json loads with diffusers; anything else is read as a release download folder.
    """
    import torch

    from . import AnyTalkerPipeline
    from .tiny import random_tiny_components

    settings.validate()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _torch_dtype(settings, device)
    if settings.model == RANDOM_TINY:
        return AnyTalkerPipeline(**random_tiny_components(settings.seed))
    folder = bundled_puppets_folder() if settings.model == PUPPETS_TINY else Path(settings.model)
    if (folder / "model_index.json").is_file():
        with quiet_loading():
            return AnyTalkerPipeline.from_pretrained(folder, dtype=dtype)
    if settings.model == PUPPETS_TINY:
        raise FileNotFoundError(f"the bundled puppets-tiny weights are missing ({folder}); build them with "
                                f"`anytalker puppets train-model runs/puppets --until export`")
    return AnyTalkerPipeline.from_release(settings.model, settings.variant, torch_dtype=dtype)


def load_pipeline(settings: ModelSettings, progress: bool = True) -> LoadedPipeline:
    """`build_pipeline`, then the scheduler chosen, the speed stack applied (`settings.speed`:
    anytalker.acceleration) and the components moved to the GPU (or offloaded)."""
    import torch

    from ..acceleration.caches import cache_setup
    from ..acceleration.stack import apply_speed

    device = "cuda" if torch.cuda.is_available() else "cpu"
    folder = model_folder(settings)
    cache_setup(settings.speed, folder)  # a missing cache calibration: before weights load
    pipe = build_pipeline(settings, device)
    scheduler, flow_shift = settings.resolved_scheduler()
    if scheduler != "unipc" or flow_shift is not None:
        from .scheduling import RELEASE_FLOW_SHIFT, make_scheduler

        pipe.scheduler = make_scheduler(scheduler, flow_shift or RELEASE_FLOW_SHIFT)
    applied, cache = apply_speed(pipe, settings, device, folder,
                                 log=(lambda line: print(line, file=sys.stderr)) if progress else None)
    pipe.set_progress_bar_config(disable=not progress)
    return LoadedPipeline(pipe, device, settings, model_defaults(settings), applied, cache)


def wrap_pipeline(pipe, settings: ModelSettings | None = None, device: str = "cpu") -> LoadedPipeline:
    """A pipeline made elsewhere (a training run's components, a recipe's model) as a LoadedPipeline."""
    settings = settings or ModelSettings(model="in-memory")
    return LoadedPipeline(pipe, device, settings, model_defaults(settings))


def load_separator(inputs: InputSettings):
    """The vocal-separation model `inputs.separator` names (None when none is asked for); load it
    once for a batch and pass it to `prepare`."""
    if not inputs.separator:
        return None
    from ..audio.separation import VocalSeparator

    return VocalSeparator(inputs.separator)


def prepare(task: GenerationTask, inputs: InputSettings | None = None, separator=None) -> PreparedTask:
    """Every input of a task loaded and checked (faces found, tracks aligned), before any model work.
    `separator`: from `load_separator(inputs)` (loaded here when not given)."""
    inputs = (inputs or InputSettings()).validate()
    if separator is None:
        separator = load_separator(inputs)
    return prepare_task(task, order=inputs.order, loudness_lufs=inputs.loudness_lufs, detectors=inputs.detectors,
                        separator=separator)


def resolved_sampling(model: LoadedPipeline | ModelSettings, sampling: SamplingSettings,
                      label=plain_label) -> SamplingSettings:
    """`sampling` with the model's defaults filled in, validated (with the model's scheduler)."""
    from .scheduling import RELEASE_FLOW_SHIFT, repeated_timesteps

    settings = model.settings if isinstance(model, LoadedPipeline) else model
    defaults = model.defaults if isinstance(model, LoadedPipeline) else model_defaults(model)
    sampling = sampling.with_defaults(**defaults).validate(label)
    scheduler, flow_shift = settings.resolved_scheduler()  # the scheduler load_pipeline sets up
    if repeated_timesteps(scheduler, flow_shift or RELEASE_FLOW_SHIFT, sampling.steps):
        raise SettingsError("steps", f"{label('steps')} {sampling.steps} is too many for the {scheduler} "
                                     "scheduler (its timesteps would repeat): use fewer or --scheduler euler")
    return sampling


def generate(model: LoadedPipeline, inputs: GenerationInputs | PreparedTask, sampling: SamplingSettings,
             on_step: Callable[[dict], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> GenerationResult:
    """One video. `on_step` receives {"step", "steps", "window", "windows", "fraction"} after every
    denoising step; `should_stop` returning True ends the run with GenerationCancelled."""
    import torch

    from .schedule import choose_resolution

    if isinstance(inputs, PreparedTask):
        inputs = GenerationInputs(inputs.image, inputs.features_audio.tracks, inputs.boxes, inputs.task.prompt)
    sampling = resolved_sampling(model, sampling)
    pipe = model.pipe
    height, width = sampling.size or choose_resolution(*inputs.image.shape[:2], area=sampling.area)
    if model.cache is not None:
        from ..acceleration.caches import ensure_cache

        ensure_cache(pipe.transformer, model.cache, sampling.steps)

    def step_end(pipeline, step, timestep, callback_kwargs):
        if on_step is not None:
            window, windows = pipeline.current_window, pipeline.num_windows
            done = window * sampling.steps + step + 1
            on_step({"step": step + 1, "steps": sampling.steps, "window": window + 1, "windows": windows,
                     "fraction": done / (sampling.steps * windows)})
        if should_stop is not None and should_stop():
            raise GenerationCancelled("generation cancelled")
        return {}

    result = pipe(
        inputs.image, [np.asarray(t, np.float32) for t in inputs.tracks], list(inputs.boxes), prompt=inputs.prompt,
        negative_prompt=sampling.negative_prompt, height=height, width=width, fps=sampling.fps,
        num_inference_steps=sampling.steps, guidance_scale=sampling.guidance_scale,
        audio_guidance_scale=sampling.audio_guidance_scale, max_frames_per_window=sampling.max_frames_per_window,
        motion_frames=sampling.motion_frames, generator=torch.Generator("cpu").manual_seed(sampling.seed),
        callback_on_step_end=step_end if (on_step or should_stop) else None,
    )
    config = pipe.scheduler.config
    info = {**result.info, "seed": sampling.seed, "model": model.settings.model, "variant": model.settings.variant,
            "scheduler": type(pipe.scheduler).__name__, "flow_shift": config.get("flow_shift", config.get("shift")),
            "dtype": str(pipe.transformer.dtype), "device": model.device}
    if model.speed or model.cache is not None:
        info["speed"] = {**model.speed, **({"cache": model.cache.describe()} if model.cache is not None else {})}
    return GenerationResult(result.frames, info)


class quiet_loading:
    """No "Loading pipeline components" / "Loading weights" bars or info logs while loading."""

    def __enter__(self):
        import diffusers.utils.logging as diffusers_logging
        import transformers.utils.logging as transformers_logging

        self.modules = (diffusers_logging, transformers_logging)
        self.state = [(m.is_progress_bar_enabled(), m.get_verbosity()) for m in self.modules]
        for module in self.modules:
            module.disable_progress_bar()
            module.set_verbosity_error()
        return self

    def __exit__(self, *exc):
        for module, (bars, verbosity) in zip(self.modules, self.state):
            if bars:
                module.enable_progress_bar()
            module.set_verbosity(verbosity)


def write_output(out: str | os.PathLike, result: GenerationResult, prepared: PreparedTask, **extra_info) -> Path:
    """The mp4 (with the tracks' mix) and its JSON sidecar, both written atomically."""
    return write_result(out, result.frames, result.info["fps"], prepared, {**result.info, **extra_info})
