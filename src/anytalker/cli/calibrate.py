"""`anytalker calibrate-cache MODEL`: measure a model's MagCache ratios and TeaCache rescale polynomial
(anytalker.acceleration.calibration) and write them where `--cache magcache|teacache` finds them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..pipeline.settings import SettingsError
from .common import add_speed_arguments, error

CALIBRATION_SEED = 800_000  # puppet scenes for calibration: not the held-out evaluation scenes (900000+)


def add_parser(subparsers) -> argparse.ArgumentParser:
    cal = subparsers.add_parser("calibrate-cache", help=run.__doc__)
    cal.add_argument("model", help="model folder (release or converted), puppets-tiny or random-tiny")
    cal.add_argument("--variant", choices=["1.3B", "14B"], default="1.3B")
    cal.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None)
    cal.add_argument("--scheduler", choices=["unipc", "euler"], default="unipc")
    cal.add_argument("--flow-shift", type=float, default=None)
    cal.add_argument("--name", default="default", help="calibration name in MODEL/cache_calibration/ (default: "
                                                      "default, the one --cache uses when none is named)")
    cal.add_argument("--out", help="write to this JSON file instead (use it with --cache-calibration FILE)")
    cal.add_argument("--image", help="reference image to calibrate on (default: puppet scenes)")
    cal.add_argument("--audio", action="append", default=[], help="one track per person, with --image")
    cal.add_argument("--bbox", action="append", default=[], help="face box x0,y0,x1,y1 per person, with --image")
    cal.add_argument("--prompt", default="")
    cal.add_argument("--scenes", type=int, default=4, help="puppet scenes to calibrate on without --image")
    cal.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    cal.add_argument("--guidance-scale", type=float, default=None)
    cal.add_argument("--size", help="HxW (with --image; default: the model's)")
    cal.add_argument("--seed", type=int, default=0)
    add_speed_arguments(cal)
    cal.set_defaults(func=run)
    return cal


def _inputs(args, runner):
    """([GenerationInputs or PreparedTask], SamplingSettings overrides) to calibrate on."""
    from ..pipeline.settings import parse_size

    if args.image:
        if not args.audio:
            raise ValueError("--image needs --audio (one track per person)")
        task = runner.GenerationTask("calibration", args.image, args.audio, args.prompt, args.bbox or None)
        size = parse_size(args.size, "--size") if args.size else None
        return [runner.prepare(task)], {"size": size}
    if args.scenes < 1:
        raise ValueError("--scenes must be >= 1")
    from ..faces.detection import square_box
    from ..puppets.dataset import make_scene

    scenes = [make_scene(2, CALIBRATION_SEED + i, frames=49) for i in range(args.scenes)]
    inputs = []
    for scene in scenes:
        shape = scene.reference.shape[:2]
        boxes = [square_box(box, shape) for box in scene.face_boxes]
        inputs.append(runner.GenerationInputs(scene.reference, scene.tracks, boxes, scene.caption))
    return inputs, {"size": scenes[0].reference.shape[:2], "fps": scenes[0].fps, "max_frames_per_window": 49}


def run(args: argparse.Namespace) -> int:
    """Measure a model's step-cache calibration (MagCache ratios, TeaCache polynomial) and save it."""
    from dataclasses import replace

    from ..acceleration.caches import calibration_path
    from ..acceleration.calibration import calibrate, write_calibration
    from ..pipeline import runner
    from ..pipeline.settings import ModelSettings, SamplingSettings, flag_label
    from .common import speed_settings

    try:
        speed = speed_settings(args)
        if speed is not None and speed.cache is not None:
            raise ValueError("calibrate-cache runs without a cache: drop --cache")
        model = ModelSettings(model=args.model, variant=args.variant, dtype=args.dtype, scheduler=args.scheduler,
                              flow_shift=args.flow_shift, speed=speed).validate(flag_label)
        out = Path(args.out) if args.out else calibration_path(runner.model_folder(model), args.name)
        inputs, fixed = _inputs(args, runner)
        sampling = SamplingSettings(steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed,
                                    **{k: v for k, v in fixed.items() if v is not None}).validate(flag_label)
        loaded = runner.load_pipeline(model, progress=False)
        loaded = replace(loaded, cache=None)
        result = calibrate(loaded, inputs, sampling)
    except (SettingsError, ValueError, FileNotFoundError, OSError) as problem:
        return error(str(problem))
    write_calibration(out, result)
    ratios = ", ".join(f"{r:.3f}" for r in result["mag_ratios"])
    print(f"wrote {out}: {result['steps']} steps over {result['runs']} runs; MagCache ratios [{ratios}]; "
          f"TeaCache polynomial degree {result['teacache']['degree']}")
    return 0
