"""Calibrating the step caches on a model (`anytalker calibrate-cache MODEL`).

One uncached generation per input records, at every step, block 0's input and timestep-modulated
input and the last block's output. From these:
- MagCache's magnitude ratios: per step, the mean over tokens of |r_t| / |r_t-1| of the blocks'
  residual r = output - input (1 at step 0), averaged over the inputs;
- TeaCache's rescale polynomial: a least-squares fit of the residual's relative L1 change against
  the modulated input's relative L1 change between consecutive steps.
The result is JSON, written into the model folder (`cache_calibration/<name>.json`) or a named file,
and read back by `SpeedSettings(cache_calibration=...)`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from ..utils.atomic import write_json_atomic
from .caches import modulated_input, relative_l1

TEACACHE_DEGREE = 4


class CalibrationRecorder:
    """Records per transformer call (one denoising step) what the calibration needs; a timestep that
    rises (a new video or window) starts a new run."""

    def __init__(self, transformer):
        self.transformer = transformer
        self.runs: list[list[dict]] = []
        self._handles = []
        self._last_timestep = None
        self._head = None

    def __enter__(self):
        first, last = self.transformer.blocks[0], self.transformer.blocks[-1]

        def on_call(module, args, kwargs):
            timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
            value = float(timestep.flatten()[0]) if timestep is not None else None
            if self._last_timestep is None or value is None or value >= self._last_timestep:
                self.runs.append([])
            self._last_timestep = value

        def on_first(module, args):
            hidden_states, temb = args[0], args[3]
            self._head = (hidden_states.detach().float(), modulated_input(module, hidden_states, temb).detach())

        def on_last(module, args, output):
            hidden_states, modulated = self._head
            self.runs[-1].append({"residual": (output.detach().float() - hidden_states), "modulated": modulated})

        self._handles = [self.transformer.register_forward_pre_hook(on_call, with_kwargs=True),
                         first.register_forward_pre_hook(on_first), last.register_forward_hook(on_last)]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def result(self) -> dict:
        """{"steps", "runs", "mag_ratios", "teacache": {"coefficients", "degree", "x", "y"}}."""
        runs = [run for run in self.runs if len(run) > 1]
        if not runs:
            raise ValueError("nothing recorded: calibration needs at least one generation of two or more steps")
        steps = min(len(run) for run in runs)
        ratios, xs, ys = np.zeros((len(runs), steps)), [], []
        for r, run in enumerate(runs):
            ratios[r, 0] = 1.0
            for t in range(1, steps):
                current, previous = run[t]["residual"], run[t - 1]["residual"]
                ratios[r, t] = float((torch.linalg.norm(current, dim=-1)
                                      / (torch.linalg.norm(previous, dim=-1) + 1e-8)).mean())
                xs.append(relative_l1(run[t]["modulated"], run[t - 1]["modulated"]))
                ys.append(relative_l1(current, previous))
        degree = min(TEACACHE_DEGREE, len(xs) - 1)
        coefficients = np.polyfit(np.asarray(xs), np.asarray(ys), degree).tolist()
        return {"steps": steps, "runs": len(runs), "mag_ratios": ratios.mean(0).round(6).tolist(),
                "teacache": {"coefficients": coefficients, "degree": degree,
                             "x": np.round(xs, 6).tolist(), "y": np.round(ys, 6).tolist()}}


def calibrate(model, inputs: Sequence, sampling) -> dict:
    """Runs `runner.generate` on each GenerationInputs of `inputs` without a cache and returns the
    calibration (see module doc) with what it was measured on."""
    from ..pipeline.runner import generate, resolved_sampling
    from .caches import remove_cache

    transformer = model.pipe.transformer
    remove_cache(transformer)
    sampling = resolved_sampling(model, sampling)
    start = time.perf_counter()
    with CalibrationRecorder(transformer) as recorder:
        for item in inputs:
            generate(model, item, sampling)
    result = recorder.result()
    config = model.pipe.scheduler.config
    result.update(model=model.settings.model, scheduler=type(model.pipe.scheduler).__name__,
                  flow_shift=config.get("flow_shift", config.get("shift")), sampling_steps=sampling.steps,
                  guidance_scale=sampling.guidance_scale, inputs=len(inputs),
                  seconds=round(time.perf_counter() - start, 1))
    return result


def write_calibration(path, calibration: dict):
    """Writes a calibration atomically (parent folders created); returns the path."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, calibration)
    return path
