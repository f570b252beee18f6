"""The speed stack on the CPU: each feature alone and combined against the plain pipeline, in one run.

A small randomly initialised AnyTalker (4 heads x 32, 4 layers: `SMALL`) with random-tiny's
encoders and VAE makes one video of 2 people at 128x224 px, 41 frames, 10 steps, guidance 4.5
(2 passes batched). For each setting: seconds per denoising step (the step loop alone: the
random VAE's encode / decode take ~30 s here and are not the subject; a warm-up video first, so
compilation is not counted), transformer block
evaluations per video (`acceleration.caches.BlockCounter`) and the ratios to the plain pipeline.
MagCache / TeaCache are calibrated on the plain pipeline first (another seed's video). Block hooks
do not fire inside compiled blocks, so compiled settings take the count of the same setting run
eagerly (a cache decides the same either way).

    python benchmarks/speed_stack.py [--steps 10] [--only compile,teacache] [--out speed_stack.json]

On this CPU fp32 is the only fast dtype, flash / sage kernels do not exist, and torchao's int8
weight-only path is not optimised: those ratios say nothing about a GPU (benchmarks/gpu_speed.py).
One torch thread (timings on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from anytalker.acceleration.caches import BlockCounter, calibration_path
from anytalker.acceleration.calibration import calibrate, write_calibration
from anytalker.acceleration.stack import apply_speed
from anytalker.faces import FaceBox
from anytalker.models import AnyTalkerTransformer
from anytalker.pipeline import AnyTalkerPipeline
from anytalker.pipeline.runner import GenerationInputs, LoadedPipeline, generate
from anytalker.pipeline.settings import ModelSettings, SamplingSettings, SpeedSettings
from anytalker.pipeline.tiny import random_tiny_components

SMALL = {"num_attention_heads": 4, "attention_head_dim": 32, "ffn_dim": 512, "num_layers": 4, "text_dim": 32,
         "text_len": 32, "image_dim": 32, "face_dim": 32, "audio_layers": 2, "audio_channels": 32,
         "audio_hidden_dim": 32, "audio_tokens_per_frame": 4}
SETTINGS = [
    ("plain", None),
    ("attention _native_math", SpeedSettings(attention_backend="_native_math")),
    ("compile", SpeedSettings(compile=True)),
    ("int8 weights", SpeedSettings(quantize="int8")),
    ("fp8 storage", SpeedSettings(quantize="fp8-storage")),
    ("group offload (leaf)", SpeedSettings(offload="leaf")),
    ("first-block 0.1", SpeedSettings(cache="first-block", cache_threshold=0.1)),
    ("magcache 0.06", SpeedSettings(cache="magcache")),
    ("taylorseer every 3", SpeedSettings(cache="taylorseer")),
    ("teacache 0.2", SpeedSettings(cache="teacache", cache_threshold=0.2)),
    ("few-step preset (4 steps)", SpeedSettings(preset="few-step")),
    ("compile + teacache 0.2", SpeedSettings(compile=True, cache="teacache", cache_threshold=0.2)),
    ("few-step + compile", SpeedSettings(preset="few-step", compile=True)),
]


def make_pipeline(seed: int = 0) -> AnyTalkerPipeline:
    parts = random_tiny_components(seed)
    torch.manual_seed(seed + 1)
    parts["transformer"] = AnyTalkerTransformer(**SMALL).eval()
    return AnyTalkerPipeline(**parts)


def inputs(seed: int, frames: int = 41) -> GenerationInputs:
    rng = np.random.default_rng(seed)
    samples = int(round(frames / 24 * 16000))
    return GenerationInputs(rng.integers(0, 255, (128, 224, 3), dtype=np.uint8),
                            [rng.standard_normal(samples).astype(np.float32) * 0.1 for _ in range(2)],
                            [FaceBox(16, 16, 96, 96), FaceBox(128, 20, 208, 100)], "two people talk")


def load(speed: SpeedSettings | None, folder: Path) -> LoadedPipeline:
    settings = ModelSettings("in-memory", dtype="fp32", speed=speed)
    pipe = make_pipeline()
    pipe.set_progress_bar_config(disable=True)
    applied, cache = apply_speed(pipe, settings, "cpu", folder)
    defaults = {"steps": 10, "guidance_scale": 4.5, "max_frames_per_window": 81, "area": 128 * 224}
    if speed is not None and speed.preset:
        defaults.update(steps=4, guidance_scale=1.0)
    return LoadedPipeline(pipe, "cpu", settings, defaults, applied, cache)


def measure(loaded: LoadedPipeline, sampling: SamplingSettings) -> dict:
    pipe, spent = loaded.pipe, []
    denoise = pipe.denoise

    def timed_denoise(*args, **kwargs):  # the step loop alone (the VAE and encoders are not the subject)
        start = time.perf_counter()
        result = denoise(*args, **kwargs)
        spent.append(time.perf_counter() - start)
        return result

    generate(loaded, inputs(1), replace(sampling, steps=2))  # warm-up: compiles, same shapes
    pipe.denoise = timed_denoise
    try:
        with BlockCounter(pipe.transformer) as counter:
            start = time.perf_counter()
            result = generate(loaded, inputs(1), sampling)
            total = time.perf_counter() - start
    finally:
        del pipe.denoise
    steps = counter.calls
    return {"steps": steps, "seconds_per_step": sum(spent) / steps, "denoise_seconds_per_video": sum(spent),
            "seconds_per_video": total, "block_evaluations": counter.evaluated, "transformer_calls": counter.calls,
            "skipped_fraction": counter.skipped_fraction, "frames": result.frames}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--only", help="comma-separated setting names (plain always runs)")
    parser.add_argument("--out", default="speed_stack.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="speed_stack_"))
    sampling = SamplingSettings(seed=3)
    chosen = [s for s in SETTINGS if not args.only or s[0] == "plain" or s[0] in args.only.split(",")]

    plain = load(None, folder)
    calibration = calibrate(plain, [inputs(7)], SamplingSettings(seed=5, steps=args.steps))
    write_calibration(calibration_path(folder, None), calibration)

    rows, reference = [], None
    for name, speed in chosen:
        loaded = load(speed, folder)
        steps = None if speed is not None and speed.preset else args.steps
        row = measure(loaded, replace(sampling, steps=steps))
        frames = row.pop("frames")
        if speed is not None and speed.compile:
            # hooks inside compiled blocks do not fire: count on the same setting uncompiled
            if speed.cache is None:
                row["block_evaluations"] = row["transformer_calls"] * SMALL["num_layers"]
            else:
                eager = measure(load(replace(speed, compile=False), folder), replace(sampling, steps=steps))
                row["block_evaluations"] = eager["block_evaluations"]
            row["skipped_fraction"] = 1 - row["block_evaluations"] / (row["transformer_calls"] * SMALL["num_layers"])
        if reference is None:
            reference = (row, frames)
        base, base_frames = reference
        row.update(setting=name, step_ratio=row["seconds_per_step"] / base["seconds_per_step"],
                   video_ratio=row["denoise_seconds_per_video"] / base["denoise_seconds_per_video"],
                   blocks_ratio=row["block_evaluations"] / base["block_evaluations"],
                   mean_abs_pixel_diff=float(np.abs(frames.astype(int) - base_frames).mean()))
        rows.append(row)
        print(f"{name}: {row['seconds_per_step']:.3f} s/step ({row['step_ratio']:.2f}x), "
              f"{row['block_evaluations']} block evaluations ({row['blocks_ratio']:.2f}x), "
              f"{row['denoise_seconds_per_video']:.1f} s denoising / video", flush=True)
        Path(args.out).write_text(json.dumps({"config": SMALL, "size": "128x224", "frames": 41, "rows": rows},
                                             indent=1))
    print("\n| setting | s / step | vs plain | block evaluations / video | vs plain | denoising s / video | "
          "vs plain |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['seconds_per_step']:.3f} | {r['step_ratio']:.2f}x | {r['block_evaluations']} "
              f"| {r['blocks_ratio']:.2f}x | {r['denoise_seconds_per_video']:.1f} | {r['video_ratio']:.2f}x |")


if __name__ == "__main__":
    main()
