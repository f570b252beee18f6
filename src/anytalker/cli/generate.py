"""`anytalker generate`: reference image + one audio track per person + prompt -> mp4 (or a batch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..pipeline.settings import SettingsError
from .common import (add_parallel_arguments, add_sampling_arguments, error, input_settings, model_settings,
                     parallel_settings, sampling_settings)


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
    add_parallel_arguments(gen)
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
    # Under torchrun / accelerate launch the processes share the tasks (groups of --context-parallel K
    # make each video together); a failed task is then recorded in OUT_DIR/failed/ and the others go on.
    from ..acceleration.parallel import start_parallel
    from ..pipeline.batch import BatchInputError, BatchSetupError, failure_record, run_batch

    # Every setting and input is checked before any model is loaded.
    try:
        model = model_settings(args)
        sampling = sampling_settings(args, model)
        inputs = input_settings(args)
        parallel = parallel_settings(args, model)
        jobs = _tasks(args)
    except (SettingsError, ValueError, FileNotFoundError) as problem:
        return error(str(problem))

    def report(event):
        if event.kind == "failed":
            print(f"failed {event.name}: {event.info['reason']} (recorded in {failure_record(event.out)})",
                  file=sys.stderr)
        elif args.quiet:
            return
        elif event.kind == "skipped":
            print(f"skip {event.name}: {event.out} exists (--overwrite to redo)")
        else:
            print(f"wrote {event.out} ({event.info['frames']} frames, {event.info['seconds']:.1f} s)")

    try:
        run_batch(jobs, model, sampling, inputs, start_parallel(parallel), overwrite=args.overwrite,
                  progress=not args.quiet, on_event=report)
    except BatchInputError as problem:
        return error("\n       ".join(problem.problems))
    except BatchSetupError as problem:
        return error(str(problem))
    return 0
