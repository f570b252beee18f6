"""What the subcommands share: error printing, the model and sampling flags, and turning parsed
flags into the library's settings objects (`anytalker.pipeline.settings`)."""

from __future__ import annotations

import argparse
import sys

from ..pipeline.settings import (
    CACHES,
    DTYPES,
    OFFLOADS,
    PRESETS,
    QUANTIZATIONS,
    SCHEDULERS,
    VARIANTS,
    InputSettings,
    ModelSettings,
    SamplingSettings,
    SpeedSettings,
    flag_label,
    parse_lora,
    parse_size,
)


def error(message: str, code: int = 2) -> int:
    """Prints `error: message` to stderr; returns the exit code (2: bad input)."""
    print(f"error: {message}", file=sys.stderr)
    return code


def add_model_arguments(parser: argparse.ArgumentParser, default_model: str = "checkpoints",
                        default_help: str = "./checkpoints") -> None:
    parser.add_argument("--model", default=default_model,
                        help=f"release folder, converted diffusers folder, random-tiny or puppets-tiny "
                             f"(default: {default_help})")
    parser.add_argument("--variant", choices=VARIANTS, default="1.3B", help="DiT of a release folder")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--cpu-offload", action="store_true", help="keep idle components in CPU memory")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="unipc",
                        help="unipc: the release's UniPC with flow sigmas; euler: flow-match Euler")
    parser.add_argument("--flow-shift", type=float, default=None, help="sigma shift (default 3.0, the release's at 480p)")
    add_speed_arguments(parser)


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """The speed stack (anytalker.acceleration): each flag a field of SpeedSettings."""
    speed = parser.add_argument_group("speed")
    speed.add_argument("--attention-backend", default=None,
                       help="diffusers attention backend: native (default), flash, _flash_3, sage, flex, ... "
                            "(checked to be installed before weights load)")
    speed.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                       help="LoRA file (Wan-original, musubi or diffusers keys), repeatable; scale default 1")
    speed.add_argument("--fuse-lora", action=argparse.BooleanOptionalAction, default=True,
                       help="merge LoRAs into the weights (default) or run them as separate layers")
    speed.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help="few-step: 4 steps, guidance 1, euler, shift 5 (for distillation LoRAs); flags win")
    speed.add_argument("--quantize", choices=QUANTIZATIONS, default=None,
                       help="fp8-storage: fp8 weights upcast per layer; int8 / fp8: torchao weight-only")
    speed.add_argument("--offload", choices=OFFLOADS, default=None,
                       help="model: CPU offload per component; block / leaf: group offload of the transformer")
    speed.add_argument("--offload-blocks", type=int, default=1, help="blocks per group for --offload block")
    speed.add_argument("--compile", action="store_true", help="torch.compile the repeated transformer blocks")
    speed.add_argument("--cache", choices=CACHES, default=None, help="step cache")
    speed.add_argument("--cache-threshold", type=float, default=None,
                       help="skip threshold (first-block 0.05, magcache 0.06, teacache 0.1 by default)")
    speed.add_argument("--cache-interval", type=int, default=None, help="taylorseer: one full step every N (3)")
    speed.add_argument("--cache-warmup", type=int, default=None, help="first steps always computed")
    speed.add_argument("--cache-patterns", default=None,
                       help="taylorseer: comma-separated regexes of the modules to predict (default proj_out, "
                            "blocks skipped)")
    speed.add_argument("--cache-calibration", default=None,
                       help="magcache / teacache ratios: a name in the model folder or a JSON file "
                            "(anytalker calibrate-cache)")


def speed_settings(args: argparse.Namespace) -> SpeedSettings | None:
    """SpeedSettings from the flags (None when none is used); checked with the model settings."""
    def get(name, default=None):
        return getattr(args, name, default)

    patterns = tuple(p for p in get("cache_patterns").split(",") if p) if get("cache_patterns") else None
    speed = SpeedSettings(
        attention_backend=get("attention_backend"), lora=tuple(parse_lora(v) for v in get("lora", []) or []),
        fuse_lora=get("fuse_lora", True), preset=get("preset"), quantize=get("quantize"), offload=get("offload"),
        offload_blocks=get("offload_blocks", 1), compile=get("compile", False), cache=get("cache"),
        cache_threshold=get("cache_threshold"), cache_interval=get("cache_interval"),
        cache_warmup=get("cache_warmup"), cache_patterns=patterns, cache_calibration=get("cache_calibration"))
    return None if speed == SpeedSettings() else speed


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Model and sampling options shared by `generate` and `bench`."""
    add_model_arguments(parser)
    parser.add_argument("--size", help="HxW in pixels, multiples of 16 (default: the image's aspect at 480x832 "
                                       "area; random-tiny: 32x48 area)")
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 40; random-tiny 4; "
                                                                "puppets-tiny 20)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="default 4.5 (puppets-tiny: 1, it was trained without an unconditional branch)")
    parser.add_argument("--audio-guidance-scale", type=float, default=None,
                        help="separate audio scale (3 passes per step); default: one scale, as released")
    parser.add_argument("--max-frames-per-window", type=int, default=None, help="longest window (4n+1, default 81)")
    parser.add_argument("--motion-frames", type=int, default=5, help="frames carried into the next window (4n+1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--negative-prompt", default=None, help="default: Wan2.1's negative prompt")


def model_settings(args: argparse.Namespace) -> ModelSettings:
    """ModelSettings from the flags, validated (SettingsError names the flag)."""
    return ModelSettings(model=args.model, variant=args.variant, dtype=args.dtype, cpu_offload=args.cpu_offload,
                         scheduler=args.scheduler, flow_shift=args.flow_shift, seed=args.seed,
                         speed=speed_settings(args)).validate(flag_label)


def sampling_settings(args: argparse.Namespace, model: ModelSettings) -> SamplingSettings:
    """SamplingSettings from the flags with the model's defaults filled in, validated."""
    from ..pipeline.runner import resolved_sampling

    settings = SamplingSettings(
        size=parse_size(args.size, "--size") if args.size else None, fps=args.fps, steps=args.steps,
        guidance_scale=args.guidance_scale, audio_guidance_scale=args.audio_guidance_scale,
        max_frames_per_window=args.max_frames_per_window, motion_frames=args.motion_frames, seed=args.seed,
        negative_prompt=args.negative_prompt).validate(flag_label)
    return resolved_sampling(model, settings, flag_label)


def input_settings(args: argparse.Namespace) -> InputSettings:
    detectors = tuple(args.detector.split(",")) if getattr(args, "detector", None) else None
    return InputSettings(order=getattr(args, "order", "left-to-right"), detectors=detectors,
                         loudness_lufs=getattr(args, "loudness", None),
                         separator=getattr(args, "separator", None)).validate(flag_label)


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """How the processes of a torchrun / accelerate launch share the work (anytalker.acceleration.parallel)."""
    group = parser.add_argument_group("several processes (torchrun / accelerate launch)")
    group.add_argument("--context-parallel", type=int, default=1, metavar="K",
                       help="K processes make each video together (context parallelism: Ulysses, or ring "
                            "with --ring-degree); the launch's processes form groups of K that share a batch's "
                            "videos (default 1)")
    group.add_argument("--ring-degree", type=int, default=1, metavar="R",
                       help="of each group's K processes, rings of R pass keys / values around (ring attention), "
                            "the rest split heads (Ulysses); R divides K. Needs --attention-backend "
                            "_native_cudnn, _native_flash, flash or sage (default 1: Ulysses only)")
    group.add_argument("--ulysses-anything", action="store_true",
                       help="Ulysses for head / token counts K does not divide (uneven, slower all-to-all)")


def parallel_settings(args: argparse.Namespace, model: ModelSettings):
    """ParallelSettings from the flags, checked against the launch and the model settings."""
    from ..acceleration.parallel import ParallelSettings

    return ParallelSettings(context_parallel=getattr(args, "context_parallel", 1),
                            ulysses_anything=getattr(args, "ulysses_anything", False),
                            ring_degree=getattr(args, "ring_degree", 1)).validate(flag_label, model=model)
