"""`anytalker convert`: a release download folder -> one diffusers-format pipeline folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..pipeline.settings import DTYPES
from .common import error


def add_parser(subparsers) -> argparse.ArgumentParser:
    convert = subparsers.add_parser("convert", help=run.__doc__)
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
    convert.set_defaults(func=run)
    return convert


def run(args: argparse.Namespace) -> int:
    """Converts a release download folder into one diffusers-format folder (safetensors, model_index.json)."""
    import json

    import torch

    from ..pipeline import AnyTalkerPipeline
    from ..utils.checkpoints import CheckpointError

    dst = Path(args.dst)
    if dst.exists() and not args.overwrite:
        return error(f"{dst} exists; pass --overwrite to replace it")
    configs = json.loads(Path(args.configs).read_text()) if args.configs else None
    try:
        pipe = AnyTalkerPipeline.from_release(args.src, args.variant, getattr(torch, DTYPES[args.dtype]),
                                              wan_dir=args.wan_dir, base_transformer=args.base_transformer,
                                              configs=configs)
    except (CheckpointError, ValueError) as problem:
        return error(str(problem))
    pipe.save_pretrained_atomic(dst, overwrite=args.overwrite)
    if not args.quiet:
        print(f"wrote {dst} (AnyTalker {args.variant}, {args.dtype}); load it with AnyTalkerPipeline.from_pretrained")
    return 0
