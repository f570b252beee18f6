"""`anytalker prepare`: talking clips -> training shards (optionally with cached encodings)."""

from __future__ import annotations

import argparse

from ..pipeline.settings import SettingsError, parse_size
from .common import error


def add_parser(subparsers) -> argparse.ArgumentParser:
    prep = subparsers.add_parser("prepare", help=run.__doc__)
    prep.add_argument("src", help="folder of mp4 clips (and optional same-name .json sidecars)")
    prep.add_argument("out", help="output folder of shard-*.tar files")
    prep.add_argument("--frames", type=int, default=25, help="video frames per sample (4n+1) at 24 fps")
    prep.add_argument("--size", default="64x128", help="HxW of the full view (W a multiple of 32)")
    prep.add_argument("--shard-size", type=int, default=64, help="samples per shard")
    prep.add_argument("--detect-every", type=int, default=6, help="run the face detector on every n-th frame")
    prep.add_argument("--max-samples-per-clip", type=int, default=None)
    prep.add_argument("--cache-model", help="cache encodings with this model's frozen encoders (folder or random-tiny)")
    prep.add_argument("--variant", choices=["1.3B", "14B"], default="1.3B")
    prep.add_argument("--quiet", action="store_true")
    prep.set_defaults(func=run)
    return prep


def run(args: argparse.Namespace) -> int:
    """Talking clips (mp4 + optional per-clip JSON) -> training shards, with reasons for every rejected clip."""
    import json

    from ..pipeline.runner import ModelSettings, build_pipeline
    from ..training.examples import ConditionEncoder
    from ..training.prepare import PrepareSettings, prepare_dataset

    try:
        height, width = parse_size(args.size, "--size")
    except SettingsError as problem:
        return error(str(problem))
    settings = PrepareSettings(frames=args.frames, height=height, width=width, detect_every=args.detect_every,
                               max_samples_per_clip=args.max_samples_per_clip)
    encode = None
    if args.cache_model:
        pipe = build_pipeline(ModelSettings(model=args.cache_model, variant=args.variant, dtype="fp32"))
        encode = ConditionEncoder(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.image_encoder,
                                  pipe.audio_encoder, text_len=pipe.transformer.config.text_len).cache_entries
    try:
        summary = prepare_dataset(args.src, args.out, settings, args.shard_size, encode, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as problem:
        return error(str(problem))
    if not args.quiet:
        print(json.dumps(summary))
    return 0
