"""`anytalker` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _offline() -> None:
    # No model hub is ever consulted; a failed hub lookup otherwise retries for ~46 s.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def cmd_parity(args: argparse.Namespace) -> int:
    """Runs the official release's golden vectors through this installation and reports the differences."""
    from tqdm import tqdm

    from .parity import TOLERANCE, default_parity_dir, run_all

    parity_dir = Path(args.parity_dir) if args.parity_dir else default_parity_dir()
    if not parity_dir.is_dir():
        print(f"error: parity directory not found: {parity_dir} (pass --parity-dir or set ANYTALKER_PARITY_DIR)",
              file=sys.stderr)
        return 2
    rows = list(tqdm(run_all(parity_dir), desc="golden cases", unit="output", disable=args.quiet))
    if not rows:
        print(f"error: no golden case files in {parity_dir}", file=sys.stderr)
        return 2
    width = max(len(f"{case}:{output}") for case, output, _ in rows)
    failures = 0
    for case, output, diff in rows:
        ok = diff <= TOLERANCE
        failures += not ok
        print(f"{case + ':' + output:<{width}}  max|diff| {diff:.2e}  {'ok' if ok else 'FAIL'}")
    print(f"{len(rows) - failures} passed, {failures} failed (tolerance {TOLERANCE:g}, float32)")
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anytalker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    parity = sub.add_parser("parity", help=cmd_parity.__doc__)
    parity.add_argument("--parity-dir", help="golden vectors (default: ../shared/parity or $ANYTALKER_PARITY_DIR)")
    parity.add_argument("--quiet", action="store_true", help="no progress bar")
    parity.set_defaults(func=cmd_parity)
    return parser


def main(argv: list[str] | None = None) -> int:
    _offline()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
