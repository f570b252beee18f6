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


def load_pipeline(model: str, variant: str, dtype_name: str | None, seed: int = 0):
    """`random-tiny`, a diffusers-format folder (`anytalker convert` output) or a release folder."""
    import torch

    from .pipeline import AnyTalkerPipeline
    from .pipeline.tiny import random_tiny_components

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, DTYPES[dtype_name]) if dtype_name else (torch.bfloat16 if device == "cuda" else torch.float32)
    if model == "random-tiny":
        pipe = AnyTalkerPipeline(**random_tiny_components(seed))
    elif (Path(model) / "model_index.json").is_file():
        pipe = AnyTalkerPipeline.from_pretrained(model, torch_dtype=dtype)
    else:
        pipe = AnyTalkerPipeline.from_release(model, variant, torch_dtype=dtype)
    return pipe, device


def _settings_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the generation settings, if anything. Checked up front: the pipeline
    would only reject them after the model is loaded (minutes for a release folder)."""
    if args.size:
        try:
            height, width = (int(v) for v in args.size.split("x"))
        except ValueError:
            return f"--size {args.size!r}: expected HxW in pixels, e.g. 480x832"
        if height <= 0 or width <= 0 or height % 16 or width % 16:
            return f"--size {args.size}: height and width must be positive multiples of 16"
    for flag, value in (("--max-frames-per-window", args.max_frames_per_window),
                        ("--motion-frames", args.motion_frames)):
        if value < 1 or (value - 1) % 4:
            return f"{flag} must be 4n+1 (1, 5, 9, ...), got {value}"
    if args.motion_frames >= args.max_frames_per_window:
        return f"--motion-frames ({args.motion_frames}) must be smaller than --max-frames-per-window"
    if args.steps < 1 or args.fps < 1:
        return f"--steps and --fps must be >= 1, got {args.steps} and {args.fps}"
    if args.guidance_scale < 1:
        return f"--guidance-scale must be >= 1, got {args.guidance_scale}"
    if args.cpu_offload:
        import torch

        if not torch.cuda.is_available():
            return "--cpu-offload needs a GPU (idle components wait in CPU memory while one runs on the GPU)"
    return None


def cmd_generate(args: argparse.Namespace) -> int:
    """Reference image + one audio track per person + prompt -> mp4 (or a batch of them)."""
    from .pipeline.tasks import GenerationTask, prepare_task, read_batch_file

    problem = _settings_error(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.batch:
        if not args.out_dir:
            print("error: --batch needs --out-dir", file=sys.stderr)
            return 2
        try:
            tasks = read_batch_file(args.batch, use_enhanced_caption=args.enhanced_caption)
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        outputs = [Path(args.out_dir) / f"{task.name}.mp4" for task in tasks]
    else:
        missing = [flag for flag, value in (("--image", args.image), ("--audio", args.audio), ("--out", args.out))
                   if not value]
        if missing:
            print(f"error: {', '.join(missing)} required (or --batch FILE --out-dir DIR)", file=sys.stderr)
            return 2
        try:
            offsets = [float(v) for v in args.offsets.split(",")] if args.offsets else None
        except ValueError:
            print(f"error: --offsets {args.offsets!r}: expected seconds separated by commas, e.g. 0,2.5",
                  file=sys.stderr)
            return 2
        tasks = [GenerationTask(Path(args.out).stem, args.image, args.audio, args.prompt, args.bbox or None,
                                args.audio_mode, offsets)]
        outputs = [Path(args.out)]
    todo = [(t, o) for t, o in zip(tasks, outputs) if args.overwrite or not o.exists()]
    for task, out in zip(tasks, outputs):
        if (task, out) not in todo and not args.quiet:
            print(f"skip {task.name}: {out} exists (--overwrite to redo)")

    # Every input is checked before any model is loaded.
    separator = None
    if args.separator:
        from .audio.separation import VocalSeparator

        try:
            separator = VocalSeparator(args.separator)
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    prepared, errors = [], []
    for task, out in todo:
        try:
            detectors = tuple(args.detector.split(",")) if args.detector else None
            prepared.append((prepare_task(task, order=args.order, loudness_lufs=args.loudness,
                                          detectors=detectors, separator=separator), out))
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            errors.append(f"{task.name}: {error}")
    if errors:
        print("error: " + "\n       ".join(errors), file=sys.stderr)
        return 2
    if not prepared:
        return 0
    return _generate(prepared, args)


def ready_pipeline(args: argparse.Namespace):
    """(pipeline, device) per the sampling options: loaded, scheduler chosen, moved or offloaded."""
    pipe, device = load_pipeline(args.model, args.variant, args.dtype, args.seed)
    if args.scheduler != "unipc" or args.flow_shift is not None:
        from .pipeline.scheduling import RELEASE_FLOW_SHIFT, make_scheduler

        pipe.scheduler = make_scheduler(args.scheduler, args.flow_shift or RELEASE_FLOW_SHIFT)
    if args.cpu_offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=args.quiet)
    return pipe, device


def _generate(prepared, args) -> int:
    from .pipeline.tasks import write_result
    from .utils.checkpoints import CheckpointError

    try:
        pipe, device = ready_pipeline(args)
    except (CheckpointError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for item, out in prepared:
        frames, info = run_generation(pipe, device, item, args)
        write_result(out, frames, args.fps, item, info)
        if not args.quiet:
            print(f"wrote {out} ({info['frames']} frames, {info['seconds']:.1f} s)")
    return 0


def run_generation(pipe, device: str, item, args: argparse.Namespace):
    """One prepared task through the pipeline with the CLI's settings: (frames, sidecar info)."""
    import torch

    height, width = (int(v) for v in args.size.split("x")) if args.size else (None, None)
    result = pipe(
        item.image, list(item.features_audio.tracks), item.boxes, prompt=item.task.prompt,
        negative_prompt=args.negative_prompt, height=height, width=width, fps=args.fps,
        num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
        audio_guidance_scale=args.audio_guidance_scale, max_frames_per_window=args.max_frames_per_window,
        motion_frames=args.motion_frames, generator=torch.Generator("cpu").manual_seed(args.seed),
    )
    info = {**result.info, "seed": args.seed, "model": args.model, "variant": args.variant,
            "scheduler": type(pipe.scheduler).__name__, "flow_shift": pipe.scheduler.config.get("flow_shift",
                                                                                            pipe.scheduler.config.get("shift")),
            "dtype": str(pipe.transformer.dtype), "device": device}
    return result.frames, info


def cmd_prepare(args: argparse.Namespace) -> int:
    """Talking clips (mp4 + optional per-clip JSON) -> training shards, with reasons for every rejected clip."""
    import json

    from .training.examples import ConditionEncoder
    from .training.prepare import PrepareSettings, prepare_dataset

    height, width = (int(v) for v in args.size.split("x"))
    settings = PrepareSettings(frames=args.frames, height=height, width=width, detect_every=args.detect_every,
                               max_samples_per_clip=args.max_samples_per_clip)
    encode = None
    if args.cache_model:
        pipe, _ = load_pipeline(args.cache_model, args.variant, "fp32")
        encode = ConditionEncoder(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.image_encoder,
                                  pipe.audio_encoder, text_len=pipe.transformer.config.text_len).cache_entries
    try:
        summary = prepare_dataset(args.src, args.out, settings, args.shard_size, encode, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(json.dumps(summary))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Trains AnyTalker from a YAML config (stage 1 or 2); resumable; run under accelerate launch for many GPUs."""
    from .training.trainer import Trainer

    trainer = Trainer(args.config, progress=not args.quiet)
    result = trainer.train(resume=args.resume, stop_after=args.stop_after)
    if not args.quiet and trainer.accelerator.is_main_process:
        print(f"step {trainer.step}: {result}")
    return 0


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Model and sampling options shared by `generate` and `bench`."""
    parser.add_argument("--model", default="checkpoints",
                        help="release folder, converted diffusers folder, or random-tiny (default: ./checkpoints)")
    parser.add_argument("--variant", choices=["1.3B", "14B"], default="1.3B", help="DiT of a release folder")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--cpu-offload", action="store_true", help="keep idle components in CPU memory")
    parser.add_argument("--size", help="HxW in pixels, multiples of 16 (default: the image's aspect at 480x832 area)")
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--steps", type=int, default=40, help="denoising steps")
    parser.add_argument("--scheduler", choices=["unipc", "euler"], default="unipc",
                        help="unipc: the release's UniPC with flow sigmas; euler: flow-match Euler")
    parser.add_argument("--flow-shift", type=float, default=None, help="sigma shift (default 3.0, the release's at 480p)")
    parser.add_argument("--guidance-scale", type=float, default=4.5)
    parser.add_argument("--audio-guidance-scale", type=float, default=None,
                        help="separate audio scale (3 passes per step); default: one scale, as released")
    parser.add_argument("--max-frames-per-window", type=int, default=81)
    parser.add_argument("--motion-frames", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)


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

    gen = sub.add_parser("generate", help=cmd_generate.__doc__)
    gen.add_argument("--image", help="reference image with one face per audio track")
    gen.add_argument("--audio", action="append", default=[],
                     help="one audio track per person (wav/flac/mp3/m4a/mp4), repeated; tracks bind to faces in --order")
    gen.add_argument("--prompt", default="", help="text prompt")
    gen.add_argument("--negative-prompt", default=None, help="default: Wan2.1's negative prompt")
    gen.add_argument("--out", help="output mp4 (a JSON sidecar is written next to it)")
    gen.add_argument("--batch", help="release batch JSON or MultiTalk-style JSON")
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
    gen.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    gen.set_defaults(func=cmd_generate)

    prep = sub.add_parser("prepare", help=cmd_prepare.__doc__)
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
    prep.set_defaults(func=cmd_prepare)

    train = sub.add_parser("train", help=cmd_train.__doc__)
    train.add_argument("config", help="training YAML (see configs/)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the output dir")
    train.add_argument("--stop-after", type=int, default=None, help="stop at this step (the schedule is unchanged)")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(func=cmd_train)

    from .evaluation.cli import add_eval_parsers

    add_eval_parsers(sub)

    from .evaluation.bench import add_bench_parser

    add_bench_parser(sub)

    from .puppets.cli import add_puppets_parser

    add_puppets_parser(sub)

    from .demo import add_demo_parser

    add_demo_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    _offline()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
