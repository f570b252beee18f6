"""`anytalker generate`: reference image + one audio track per person + prompt -> mp4 (or a batch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..pipeline.settings import SettingsError
from .common import add_sampling_arguments, error, input_settings, model_settings, sampling_settings


def add_parser(subparsers) -> argparse.ArgumentParser:
    gen = subparsers.add_parser("generate", help=run.__doc__)
    gen.add_argument("--image", help="reference image with one face per audio track")
    gen.add_argument("--audio", action="append", default=[],
                     help="one audio track per person (wav/flac/mp3/m4a/mp4), repeated; tracks bind to faces in --order")
    gen.add_argument("--prompt", default="", help="text prompt")
    gen.add_argument("--out", help="output mp4 (a JSON sidecar is written next to it)")
    gen.add_argument("--batch", help="release batch JSON or MultiTalk job JSON")
    gen.add_argument("--out-dir", help="output folder for --batch (one <task>.mp4 per task)")
    gen.add_argument("--overwrite", action="store_true", help="redo outputs that exist (default: skip them)")
    gen.add_argument("--enhanced-caption", action="store_true", help="use enhance_caption of release batch files")
    gen.add_argument("--bbox", action="append", default=[],
                     help="face box x0,y0,x1,y1 in pixels, one per person in track order (overrides detection)")
    gen.add_argument("--order", choices=["left-to-right", "top-to-bottom"], default="left-to-right",
                     help="how detected faces are ordered to meet the tracks")
    gen.add_argument("--detector", help="face detector chain, tried in order (default dlib,opencv,dlib-cnn; also "
                                        "mediapipe, insightface:MODEL_DIR for the release's detector)")
    gen.add_argument("--audio-mode", choices=["pad", "concat", "add"], default="pad",
                     help="pad: tracks share one timeline (shorter ones zero-padded); concat/add: turns one after another")
    gen.add_argument("--offsets", help="concat mode: each turn's start in seconds, comma-separated")
    gen.add_argument("--separator", help="vocal separation model (TorchScript, see anytalker.audio.separation) "
                                         "applied to the tracks the model listens to")
    gen.add_argument("--loudness", type=float, default=None, help="normalise each track to this LUFS (e.g. -23)")
    add_sampling_arguments(gen)
    gen.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    gen.set_defaults(func=run)
    return gen


def _tasks(args: argparse.Namespace):
    """[(task, output path)] from --batch or the single-video flags."""
    from ..pipeline.tasks import GenerationTask, read_batch_file

    if args.batch:
        if not args.out_dir:
            raise ValueError("--batch needs --out-dir")
        tasks = read_batch_file(args.batch, use_enhanced_caption=args.enhanced_caption)
        return [(task, Path(args.out_dir) / f"{task.name}.mp4") for task in tasks]
    missing = [flag for flag, value in (("--image", args.image), ("--audio", args.audio), ("--out", args.out))
               if not value]
    if missing:
        raise ValueError(f"{', '.join(missing)} required (or --batch FILE --out-dir DIR)")
    try:
        offsets = [float(v) for v in args.offsets.split(",")] if args.offsets else None
    except ValueError:
        raise ValueError(f"--offsets {args.offsets!r}: expected seconds separated by commas, e.g. 0,2.5") from None
    task = GenerationTask(Path(args.out).stem, args.image, args.audio, args.prompt, args.bbox or None,
                          args.audio_mode, offsets)
    return [(task, Path(args.out))]


def run(args: argparse.Namespace) -> int:
    """Reference image + one audio track per person + prompt -> mp4 (or a batch of them)."""
    from ..pipeline import runner
    from ..utils.checkpoints import CheckpointError

    # Every setting and input is checked before any model is loaded.
    try:
        model = model_settings(args)
        sampling = sampling_settings(args, model)
        inputs = input_settings(args)
        jobs = _tasks(args)
    except (SettingsError, ValueError, FileNotFoundError) as problem:
        return error(str(problem))
    todo = []
    for task, out in jobs:
        if args.overwrite or not out.exists():
            todo.append((task, out))
        elif not args.quiet:
            print(f"skip {task.name}: {out} exists (--overwrite to redo)")
    prepared, errors = [], []
    try:
        separator = runner.load_separator(inputs)
    except (FileNotFoundError, ValueError) as problem:
        return error(str(problem))
    for task, out in todo:
        try:
            prepared.append((runner.prepare(task, inputs, separator=separator), out))
        except (ValueError, FileNotFoundError, RuntimeError) as problem:
            errors.append(f"{task.name}: {problem}")
    if errors:
        return error("\n       ".join(errors))
    if not prepared:
        return 0
    try:
        loaded = runner.load_pipeline(model, progress=not args.quiet)
    except (CheckpointError, ValueError, OSError) as problem:
        return error(str(problem))
    for item, out in prepared:
        result = runner.generate(loaded, item, sampling)
        runner.write_output(out, result, item)
        if not args.quiet:
            print(f"wrote {out} ({result.info['frames']} frames, {result.info['seconds']:.1f} s)")
    return 0
