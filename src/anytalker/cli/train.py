"""`anytalker train CONFIG.yaml`: two-stage training (one process, or under accelerate launch / torchrun)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    train = subparsers.add_parser("train", help=run.__doc__)
    train.add_argument("config", help="training YAML (see configs/)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the output dir")
    train.add_argument("--stop-after", type=int, default=None, help="stop at this step (the schedule is unchanged)")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(func=run)
    return train


def run(args: argparse.Namespace) -> int:
    """Trains AnyTalker from a YAML config (stage 1 or 2); resumable; run under accelerate launch for many GPUs."""
    from ..training.trainer import Trainer

    trainer = Trainer(args.config, progress=not args.quiet)
    result = trainer.train(resume=args.resume, stop_after=args.stop_after)
    if not args.quiet and trainer.accelerator.is_main_process:
        print(f"step {trainer.step}: {result}")
    return 0
