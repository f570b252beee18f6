"""`anytalker parity`: the official release's golden vectors through this installation."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import error


def add_parser(subparsers) -> argparse.ArgumentParser:
    parity = subparsers.add_parser("parity", help=run.__doc__)
    parity.add_argument("--parity-dir", help="golden vectors (default: ../shared/parity or $ANYTALKER_PARITY_DIR)")
    parity.add_argument("--quiet", action="store_true", help="no progress bar")
    parity.set_defaults(func=run)
    return parity


def run(args: argparse.Namespace) -> int:
    """Runs the official release's golden vectors through this installation and reports the differences."""
    from tqdm import tqdm

    from ..parity import default_parity_dir, format_report, run_all

    parity_dir = Path(args.parity_dir) if args.parity_dir else default_parity_dir()
    if not parity_dir.is_dir():
        return error(f"parity directory not found: {parity_dir} (pass --parity-dir or set ANYTALKER_PARITY_DIR)")
    rows = list(tqdm(run_all(parity_dir), desc="golden cases", unit="output", disable=args.quiet))
    if not rows:
        return error(f"no golden case files in {parity_dir}")
    lines, failures = format_report(rows)
    print("\n".join(lines))
    return 1 if failures else 0
