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


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def cmd_convert(args: argparse.Namespace) -> int:
    """Converts a release download folder into one diffusers-format folder (safetensors, model_index.json)."""
    import json

    import torch

    from .pipeline import AnyTalkerPipeline
    from .utils.checkpoints import CheckpointError

    dst = Path(args.dst)
    if dst.exists() and not args.overwrite:
        print(f"error: {dst} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    configs = json.loads(Path(args.configs).read_text()) if args.configs else None
    try:
        pipe = AnyTalkerPipeline.from_release(args.src, args.variant, getattr(torch, DTYPES[args.dtype]),
                                              wan_dir=args.wan_dir, base_transformer=args.base_transformer,
                                              configs=configs)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    pipe.save_pretrained_atomic(dst, overwrite=args.overwrite)
    if not args.quiet:
        print(f"wrote {dst} (AnyTalker {args.variant}, {args.dtype}); load it with AnyTalkerPipeline.from_pretrained")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anytalker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    parity = sub.add_parser("parity", help=cmd_parity.__doc__)
    parity.add_argument("--parity-dir", help="golden vectors (default: ../shared/parity or $ANYTALKER_PARITY_DIR)")
    parity.add_argument("--quiet", action="store_true", help="no progress bar")
    parity.set_defaults(func=cmd_parity)

    convert = sub.add_parser("convert", help=cmd_convert.__doc__)
    convert.add_argument("src", help="release download folder (Wan2.1-Fun-1.3B-Inp/, wav2vec2-base-960h/, AnyTalker/)")
    convert.add_argument("dst", help="output diffusers-format folder")
    convert.add_argument("--variant", choices=["1.3B", "14B"], default="1.3B")
    convert.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                         help="dtype of the transformer, text and image encoders (VAE and wav2vec2 stay fp32)")
    convert.add_argument("--wan-dir", help="Wan2.1 folder (release or diffusers layout; default SRC/Wan2.1-Fun-1.3B-Inp)")
    convert.add_argument("--base-transformer", help="Wan2.1 DiT supplying weights the AnyTalker file lacks")
    convert.add_argument("--configs", help="JSON of constructor configs for non-standard sizes: "
                                           '{"vae": {...}, "text_encoder": {...}, "image_encoder": {...}}')
    convert.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    convert.add_argument("--quiet", action="store_true", help="print nothing on success")
    convert.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    _offline()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
