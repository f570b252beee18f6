"""`anytalker` command line: one entry point, one module per subcommand.

Each module has `add_parser(subparsers)` and `run(args)`: parse the flags into the library's
settings, call one library function, print. Nothing outside this package imports it.
"""

from __future__ import annotations

import argparse
import os

from . import app, bench, calibrate, convert, demo, evaluate, generate, parity, prepare, puppets, serve, train

SUBCOMMANDS = (parity, convert, generate, prepare, train, evaluate, bench, calibrate, puppets, demo, serve, app)


def _offline() -> None:
    # No model hub is ever consulted; a failed hub lookup otherwise retries for ~46 s.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anytalker", description="AnyTalker: audio-driven talking video for any "
                                                                   "number of people.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    _offline()
    args = build_parser().parse_args(argv)
    return args.func(args)

