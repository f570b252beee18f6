"""`anytalker demo`: a fresh puppet scene animated on the CPU by the bundled puppets-tiny model."""

from __future__ import annotations

import argparse

from .common import error


def add_parser(subparsers) -> argparse.ArgumentParser:
    demo = subparsers.add_parser("demo", help=run.__doc__, description=run.__doc__)
    demo.add_argument("--out", default="demo.mp4", help="output video (default demo.mp4); the scene's inputs "
                                                        "and metrics are written next to it")
    demo.add_argument("--persons", type=int, choices=[1, 2, 3], default=2,
                      help="puppets in the scene (default 2; the model was trained on 1 and 2)")
    demo.add_argument("--seed", type=int, default=None, help="scene seed (default: a random one, printed)")
    demo.add_argument("--seconds", type=float, default=2.0, help="scene length (default 2, the training length)")
    demo.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    demo.add_argument("--guidance-scale", type=float, default=1.0, help="default 1 (no guidance, as trained)")
    demo.add_argument("--model", default=None, help="pipeline folder (default: the bundled puppets-tiny)")
    demo.add_argument("--quiet", action="store_true", help="print nothing")
    demo.set_defaults(func=run)
    return demo


def run(args: argparse.Namespace) -> int:
    """Animates a fresh puppet scene with the bundled puppets-tiny model on the CPU and scores it."""
    from ..puppets.demo import run_demo
    from ..puppets.model import WeightsMissing

    if args.steps < 1 or args.seconds <= 0:
        return error("--steps and --seconds must be positive")
    try:
        run_demo(args.out, persons=args.persons, seed=args.seed, steps=args.steps, seconds=args.seconds,
                 model=args.model, guidance_scale=args.guidance_scale, quiet=args.quiet)
    except WeightsMissing as problem:
        return error(str(problem))
    return 0
