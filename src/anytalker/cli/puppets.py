"""`anytalker puppets ...`: make synthetic clip sets, and check measurements against ground truth.

Registered by `anytalker.cli` (`add_parser`).
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _make_one(job: tuple) -> str:
    """One clip (a top-level function so worker processes can run it). Returns 'wrote' or 'skipped'."""
    from ..puppets.dataset import clip_name, clip_seed, make_scene, write_clip

    out, index, options = job
    folder = Path(out) / clip_name(options["seed"], options["persons"], index)
    if (folder / "meta.json").is_file() and not options["overwrite"]:
        return "skipped"
    scene = make_scene(options["persons"], clip_seed(options["seed"], options["persons"], index),
                       tile=options["tile"], fps=options["fps"], min_seconds=options["min_seconds"],
                       max_seconds=options["max_seconds"], voice=options["voice"])
    write_clip(scene, folder)
    return "wrote"


def cmd_make(args: argparse.Namespace) -> int:
    """Renders --clips puppet clips of --persons puppets into OUT, one folder per clip (see dataset.py)."""
    from tqdm import tqdm

    from ..puppets.dataset import frame_range
    from ..puppets.voice import espeak_available

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"error: {out} exists and is not a folder", file=sys.stderr)
        return 2
    if args.clips < 1:
        print("error: --clips must be at least 1", file=sys.stderr)
        return 2
    if args.voice == "espeak" and not espeak_available():
        print("error: --voice espeak needs espeak-ng (Debian: apt-get install espeak-ng)", file=sys.stderr)
        return 2
    if args.tile % 16 or args.tile < 32:
        print(f"error: --tile must be a multiple of 16 and at least 32, got {args.tile}", file=sys.stderr)
        return 2
    try:
        frame_range(args.persons, args.fps, args.min_seconds, args.max_seconds)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    options = {"seed": args.seed, "persons": args.persons, "tile": args.tile, "fps": args.fps,
               "min_seconds": args.min_seconds, "max_seconds": args.max_seconds, "voice": args.voice,
               "overwrite": args.overwrite}
    jobs = [(str(out), index, options) for index in range(args.start, args.start + args.clips)]
    out.mkdir(parents=True, exist_ok=True)
    progress = tqdm(total=len(jobs), desc="puppet clips", unit="clip", disable=args.quiet)
    results = []
    try:
        if args.jobs > 1:
            with ProcessPoolExecutor(max_workers=args.jobs) as pool:
                for result in pool.map(_make_one, jobs):
                    results.append(result)
                    progress.update()
        else:
            for job in jobs:
                results.append(_make_one(job))
                progress.update()
    except (ValueError, RuntimeError) as error:  # e.g. clips too short for everyone to take a turn
        progress.close()
        print(f"error: {error} ({len(results)} clips done; rerun to continue)", file=sys.stderr)
        return 2
    progress.close()
    if not args.quiet:
        skipped = results.count("skipped")
        print(f"wrote {results.count('wrote')} clips to {out}" + (f" ({skipped} existed; --overwrite redoes them)"
                                                                   if skipped else ""))
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    """Measures clip videos (or --video, e.g. a generated one) against the clips' ground truth."""
    from anytalker.video.io import read_video

    from ..puppets.dataset import load_clip
    from ..puppets.measure import agreement, measure_frames

    if args.video and len(args.clips) != 1:
        print("error: --video compares one video with one clip folder", file=sys.stderr)
        return 2
    for folder in map(Path, args.clips):
        if not (folder / "meta.json").is_file():
            print(f"error: {folder} is not a clip folder (no meta.json)", file=sys.stderr)
            return 2
        meta, truth = load_clip(folder)
        video = read_video(args.video or folder / meta["files"]["video"])
        frames = video.frames[: meta["frames"]]
        if frames.shape[0] != meta["frames"] or frames.shape[1:3] != (meta["height"], meta["width"]):
            print(f"error: {folder}: video is {list(frames.shape[:3])}, the clip is "
                  f"[{meta['frames']}, {meta['height']}, {meta['width']}]", file=sys.stderr)
            return 2
        result = agreement(measure_frames(frames, meta["face_boxes"]), truth)
        print(f"{folder.name}: mouth r {result['mouth_r']:.3f} (mae {result['mouth_mae_px']:.2f} px), "
              f"landmarks r {result['landmarks_r']:.3f} (mae {result['landmarks_mae_px']:.2f} px)")
    return 0


def cmd_train_model(args: argparse.Namespace) -> int:
    """Trains the tiny puppet AnyTalker (data, VAE, stage 1, stage 2, export), then evaluates it, on 3
    puppets too, against its ablations (OUT/results.md); resumable."""
    import os

    # Before torch loads OpenMP: threads that sleep instead of spinning when they wait. On a
    # shared machine spinning threads of two jobs stall each other (measured here: 20x slower).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..puppets.model import STEPS, train_puppets_model

    if args.until and args.until not in STEPS:
        print(f"error: --until must be one of {', '.join(STEPS)}", file=sys.stderr)
        return 2
    try:
        state = train_puppets_model(args.out, quick=args.quick, config_dir=args.configs, progress=not args.quiet,
                                    until=args.until, log=(lambda text: None) if args.quiet else None)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.quiet:
        total = sum(state["done"].values())
        print(f"done: {', '.join(state['done'])} ({total / 60:.1f} min in all); "
              f"the model is {Path(args.out) / 'puppets-tiny'}")
        report = Path(args.out) / "results.md"
        if "report" in state["done"] and report.is_file():
            print(report.read_text())
    return 0


def cmd_evaluate_model(args: argparse.Namespace) -> int:
    """Scores a puppet model on held-out scenes: lip sync, binding, Interactivity (and the ground truth's)."""
    import json

    from ..puppets.model import WeightsMissing, evaluate_puppets_model, evaluation_scenes, load_pipeline

    try:
        pipe = load_pipeline(args.model)
    except WeightsMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    scenes = evaluation_scenes(args.scenes, args.persons, args.seed, args.frames)
    results = {"model": evaluate_puppets_model(pipe, scenes, steps=args.steps, guidance_scale=args.guidance_scale,
                                               progress=not args.quiet),
               "ground_truth": evaluate_puppets_model(None, scenes)}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    for name, result in results.items():
        print(f"{name}: {json.dumps(result['summary'])}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers the `puppets` subcommands (make, measure, train-model, evaluate-model) on the main parser."""
    puppets = subparsers.add_parser("puppets", help="synthetic talking-puppet clips: make them, measure them")
    sub = puppets.add_subparsers(dest="puppets_command", required=True)

    make = sub.add_parser("make", help=cmd_make.__doc__, description=cmd_make.__doc__)
    make.add_argument("out", help="output folder (created); clips go to OUT/p<persons>_s<seed>_<index>/")
    make.add_argument("--clips", type=int, default=10, help="number of clips (default 10)")
    make.add_argument("--persons", type=int, choices=[1, 2, 3, 4], default=1, help="puppets per clip (default 1)")
    make.add_argument("--seed", type=int, default=0, help="set seed; clip i's own seed derives from it (default 0)")
    make.add_argument("--start", type=int, default=0, help="index of the first clip, to extend a set (default 0)")
    make.add_argument("--tile", type=int, default=64, help="pixels per puppet: frames are TILE x persons*TILE")
    make.add_argument("--fps", type=int, default=24)
    make.add_argument("--min-seconds", type=float, default=None, help="shortest clip (default 2, or 3 for 3+ puppets)")
    make.add_argument("--max-seconds", type=float, default=None, help="longest clip (default 4)")
    make.add_argument("--voice", choices=["procedural", "espeak", "auto"], default="procedural",
                      help="procedural (default, reproducible anywhere) or espeak (needs espeak-ng)")
    make.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    make.add_argument("--overwrite", action="store_true", help="redo clips that exist (default: skip them)")
    make.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    make.set_defaults(func=cmd_make)

    measure = sub.add_parser("measure", help=cmd_measure.__doc__, description=cmd_measure.__doc__)
    measure.add_argument("clips", nargs="+", help="clip folders written by `puppets make`")
    measure.add_argument("--video", help="measure this video instead of the clip's own (same size and length)")
    measure.set_defaults(func=cmd_measure)

    train = sub.add_parser("train-model", help=cmd_train_model.__doc__, description=cmd_train_model.__doc__)
    train.add_argument("out", help="working folder (created); the model ends up in OUT/puppets-tiny")
    train.add_argument("--quick", action="store_true", help="every step at toy size (a smoke test, seconds)")
    train.add_argument("--configs", help="folder of recipe.yaml, stage1.yaml, stage2.yaml (default: configs/puppets)")
    train.add_argument("--until", help="stop after this step: data, vae, base, prepare, stage1, stage2, export (the "
                       "model), evaluate, generalise, ablations, report")
    train.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    train.set_defaults(func=cmd_train_model)

    evaluate = sub.add_parser("evaluate-model", help=cmd_evaluate_model.__doc__,
                              description=cmd_evaluate_model.__doc__)
    evaluate.add_argument("model", nargs="?", default=None, help="pipeline folder (default: the bundled puppets-tiny)")
    evaluate.add_argument("--scenes", type=int, default=12, help="held-out scenes (default 12)")
    evaluate.add_argument("--persons", type=int, choices=[1, 2, 3, 4], default=2)
    evaluate.add_argument("--seed", type=int, default=900000, help="seed of the first scene (default 900000)")
    evaluate.add_argument("--frames", type=int, default=49, help="frames per scene, 4n+1 (default 49 = 2 s)")
    evaluate.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    evaluate.add_argument("--guidance-scale", type=float, default=1.0)
    evaluate.add_argument("--json", help="write every number (per scene too) to this file")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(func=cmd_evaluate_model)
    return puppets
