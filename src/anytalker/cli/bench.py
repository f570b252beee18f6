"""`anytalker bench`: generate every case of a benchmark with one model, evaluate them, tabulate and plot.

    anytalker bench --model MODEL --benchmark DIR --out OUT [--cases interact_1,interact_2] [--limit N]
                    [--size HxW] [--steps N] [--backend dlib] [--metrics interactivity,sync,identity]
                    [--syncnet FILE] [--image IMAGE | --frames DIR] [--overwrite] [--reevaluate] [--quiet]

Benchmark folders (the kind is read from the folder):
- InteractiveEyes: speaker_duration.json, audio_left/<case>_left.wav, audio_right/<case>_right.wav and one
  two-person reference image per case, frames/<case>.png (or .jpg/.jpeg/.webp/.bmp). The public release
  ships NO reference images (they come from web videos): pass --frames DIR (DIR/<case>.png) or --image
  IMAGE (one two-person image for every case). Each case is one two-person generation, left track to
  the left face, tracks sharing one timeline ("pad" mode). Metrics: Interactivity (per person and
  pooled; speaker intervals are SS.FF 30-fps timecodes, see speakers.py) and, with --syncnet, Sync-C /
  Sync-D per face against its own track and Sync-C* over the labelled speaking intervals.
- clips (HDTF / VFHQ style): a folder of single-person videos. Reference = the clip's first frame
  (saved to OUT/references/<case>.png), audio = the clip's own soundtrack. Metrics: identity (dlib's
  offline face descriptor by default; --embedder arcface --arcface FILE for the paper's kind) against
  the first generated frame and the reference, and Sync-C / Sync-D with --syncnet.
Default metrics: interactivity (InteractiveEyes) or identity (clips), plus sync when --syncnet is given.

OUT layout:
    videos/<case>.mp4 (+ .json sidecar)   generated videos, kept: a rerun skips them
    references/<case>.png                 clips: the first frame used as the reference image
    metrics/<case>.json                   one record per case: status, failures with reasons, metric
                                          reports, per-frame listening motion series
    results.csv, results.md, summary.json per-case rows (results.md adds mean and count rows)
    plots/interactivity.png, plots/motion_<case>.png, plots/<metric>.png   (needs matplotlib)

Resuming: a kept video is reused when its sidecar shows the same model, seed, steps, fps, guidance,
size (when --size is given), reference image and audio; a video made with other settings stops the
run before any model is loaded (pass --overwrite to regenerate). A metric record is reused when it
was computed from the same video file (size and mtime) with the same metric settings. Failed
generations are retried on the next run; failed evaluations of an unchanged video are kept (they
are deterministic), --reevaluate redoes them. Every case ends in the tables: a failure is recorded
with its stage (input, generation, evaluation), reason and message and counted; never dropped.

Over several processes (one per GPU), the cases to generate are shared, each process writing its own
videos; once all are done, rank 0 evaluates and writes the tables (the others exit 0):
    torchrun --nproc_per_node 8 -m anytalker.cli bench --model MODEL --benchmark DIR --out OUT
    accelerate launch --num_processes 8 -m anytalker.cli bench --model MODEL --benchmark DIR --out OUT
A rerun skips the finished videos (whoever made them); a failed generation is recorded in
metrics/<case>.json and the others go on.

Exit codes: 0 at least one case scored on every requested metric, 1 no case did, 2 bad input
(unknown case, missing weights or reference images, kept videos made with other settings).
"""


from __future__ import annotations

import argparse

from ..evaluation.bench import EMBEDDERS, METRICS, BenchError, BenchSettings, run_bench
from ..evaluation.landmarks import LANDMARK_BACKENDS
from ..evaluation.speakers import TIME_FORMATS
from ..pipeline.settings import SettingsError, flag_label
from .common import add_sampling_arguments, error, input_settings, model_settings, sampling_settings


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `bench` on the main parser's subparsers; returns its parser."""
    bench = subparsers.add_parser("bench", help=run.__doc__, description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--benchmark", required=True, help="InteractiveEyes folder or a folder of single-person clips")
    bench.add_argument("--out", required=True, help="output folder (videos/, metrics/, results.*, plots/)")
    bench.add_argument("--cases", help="comma-separated case names (default: all), e.g. interact_1,interact_2")
    bench.add_argument("--limit", type=int, help="only the first N cases (natural order)")
    bench.add_argument("--image", help="InteractiveEyes: one two-person reference image for every case")
    bench.add_argument("--frames", help="InteractiveEyes: folder of reference images <case>.png "
                                        "(default: BENCHMARK/frames)")
    bench.add_argument("--metrics", help=f"comma-separated, from {', '.join(METRICS)} (default: interactivity "
                                         "for InteractiveEyes, identity for clips; plus sync with --syncnet)")
    bench.add_argument("--syncnet", help="syncnet_v2.model for Sync-C / Sync-D (never downloaded)")
    bench.add_argument("--backend", choices=LANDMARK_BACKENDS, default="dlib",
                       help="landmark backend for tracking and Interactivity (default dlib, offline)")
    bench.add_argument("--insightface-dir", help="insightface model folder (det_*.onnx + 2d106det.onnx)")
    bench.add_argument("--max-bad-fraction", type=float, default=0.1,
                       help="Interactivity: fraction of frames with a missing person / extra face tolerated")
    bench.add_argument("--time-format", choices=TIME_FORMATS, default="timecode30",
                       help="speaker_duration.json values: SS.FF at 30 fps (the benchmark's file) or seconds")
    bench.add_argument("--embedder", choices=EMBEDDERS, default="dlib",
                       help="identity embedder: dlib (offline, default) or arcface (needs --arcface)")
    bench.add_argument("--arcface", help="ArcFace ONNX file, e.g. buffalo_l/w600k_r50.onnx (never downloaded)")
    bench.add_argument("--id-stride", type=int, default=5, help="identity: embed every n-th frame (default 5)")
    bench.add_argument("--overwrite", action="store_true", help="regenerate every selected case")
    bench.add_argument("--reevaluate", action="store_true", help="recompute every metric record")
    # Generation settings, as `anytalker generate`.
    bench.add_argument("--prompt", default="", help="text prompt for every case")
    bench.add_argument("--detector", help="face detector chain for the reference images (as generate)")
    add_sampling_arguments(bench)
    bench.add_argument("--quiet", action="store_true", help="no progress bars or messages (notices still print)")
    bench.set_defaults(func=run)
    return bench


def _names(text: str | None) -> tuple[str, ...] | None:
    """"a, b,,c" -> ("a", "b", "c"); None (the default) when the flag is not given or empty."""
    return tuple(n.strip() for n in text.split(",") if n.strip()) if text else None


def bench_settings(args: argparse.Namespace) -> BenchSettings:
    """BenchSettings from the flags, validated (SettingsError names the flag)."""
    return BenchSettings(
        benchmark=args.benchmark, out=args.out, cases=_names(args.cases), limit=args.limit,
        image=args.image, frames=args.frames, metrics=_names(args.metrics),
        syncnet=args.syncnet, backend=args.backend, insightface_dir=args.insightface_dir,
        max_bad_fraction=args.max_bad_fraction, time_format=args.time_format, embedder=args.embedder,
        arcface=args.arcface, id_stride=args.id_stride, overwrite=args.overwrite, reevaluate=args.reevaluate,
        prompt=args.prompt).validate(flag_label)


def _silent(message: str) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    """Generates every case of a benchmark (resumable), evaluates them, writes CSV, markdown and plots."""
    try:
        model = model_settings(args)
        sampling = sampling_settings(args, model)
        inputs = input_settings(args)
        summary = run_bench(bench_settings(args), model, sampling, inputs, progress=not args.quiet,
                            say=_silent if args.quiet else print)
    except (SettingsError, BenchError) as problem:
        return error(str(problem))
    if summary is None:  # another process of a launch: rank 0 evaluates and reports
        return 0
    return 0 if summary["scored"] else 1
