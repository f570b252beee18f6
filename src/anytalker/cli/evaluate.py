"""`anytalker eval ...`: the evaluation subcommands. `add_eval_parsers(subparsers)` registers them.

    anytalker eval interactivity --video V.mp4 --speakers speaker_duration.json [--backend dlib] [--json]
    anytalker eval interactivity --dir OUT/ --speakers speaker_duration.json [--json]
    anytalker eval sync --video V.mp4 --syncnet syncnet_v2.model [--audio L.wav --audio R.wav]
                        [--speakers speaker_duration.json] [--json]
    anytalker eval fid --real DIR --fake DIR --inception pt_inception-2015-12-05-6726825d.pth [--json]
    anytalker eval fvd --real DIR --fake DIR --i3d i3d_torchscript.pt [--json]
    anytalker eval id --video V.mp4 [--reference IMAGE] [--embedder dlib|arcface --arcface w600k_r50.onnx] [--json]

Exit codes: 0 a score was produced (with --dir: at least one video scored; failures are listed and
counted), 1 no score (every video failed), 2 bad input (missing file, weights, unknown backend).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..evaluation.landmarks import LANDMARK_BACKENDS
from ..evaluation.speakers import TIME_FORMATS
from ..utils.records import format_number, jsonable
from ..video.io import IMAGE_SUFFIXES
from .common import error

__all__ = ["add_parser"]


def _print_json(obj) -> None:
    print(json.dumps(jsonable(obj), indent=2, allow_nan=False))


# --- interactivity ----------------------------------------------------------------------------

def cmd_interactivity(args: argparse.Namespace) -> int:
    """Eye/eyebrow motion of listeners (AnyTalker's Interactivity) against speaker_duration.json."""
    from ..faces.detection import DetectorUnavailable
    from ..evaluation.interactivity import InteractivityConfig, score_videos, summarize, video_files
    from ..evaluation.landmarks import get_landmark_source
    from ..evaluation.speakers import SpeakerLabelError, load_speaker_labels

    if bool(args.video) == bool(args.dir):
        return error("pass --video V.mp4 (repeatable) or --dir FOLDER")
    try:
        labels = load_speaker_labels(args.speakers, args.time_format)
        videos = [Path(v) for v in args.video] if args.video else video_files(args.dir)
        missing = [str(v) for v in videos if not v.is_file()]
        if missing:
            return error(f"video not found: {', '.join(missing)}")
        if not videos:
            return error(f"no video files (.mp4, .mov, .mkv, .webm, .avi) in {args.dir}")
        config = InteractivityConfig(max_bad_fraction=args.max_bad_fraction)
        source = get_landmark_source(args.backend, args.insightface_dir)
    except (FileNotFoundError, NotADirectoryError, SpeakerLabelError, DetectorUnavailable, ValueError) as problem:
        return error(str(problem))
    results = score_videos(videos, labels, source, config)
    summary = summarize(results)
    if args.json:
        _print_json(results[0].to_dict() if args.video and len(results) == 1
                    else {"summary": summary, "videos": [r.to_dict() for r in results]})
    else:
        for r in results:
            people = "  ".join(f"{p.name} {format_number(p.score)}" + (f" ({p.reason})" if p.reason else "")
                               for p in r.people)
            if r.failure:
                print(f"{r.video}: FAILED {r.failure}: {r.message}")
            else:
                print(f"{r.video}: interactivity {format_number(r.score)}  [{people}]  "
                      f"({r.backend}, {r.frames} frames)")
            for warning in r.warnings:
                print(f"{r.video}: warning: {warning}")
        if len(results) > 1:
            failures = ", ".join(f"{k} {v}" for k, v in sorted(summary["failures"].items())) or "none"
            print(f"mean interactivity {format_number(summary['score'])} over {summary['scored']} of "
                  f"{summary['videos']} videos; failed: {summary['failed']} ({failures})")
    return 0 if summary["scored"] else 1


# --- sync ---------------------------------------------------------------------------------------

def cmd_sync(args: argparse.Namespace) -> int:
    """Lip sync: SyncNet Sync-C / Sync-D per face and the paper's per-speaker Sync-C*."""
    from ..audio import AudioError, load_audio, resample, speaking_intervals
    from ..faces.detection import DetectorUnavailable
    from ..video.io import read_video
    from ..evaluation.landmarks import get_landmark_source
    from ..evaluation.speakers import SpeakerLabelError, labels_for_video, load_speaker_labels
    from ..evaluation.sync import SAMPLE_RATE, evaluate_sync
    from ..evaluation.syncnet import load_syncnet
    from ..evaluation.tracking import track_faces
    from ..evaluation.weights import MissingWeightsError

    try:
        model = load_syncnet(args.syncnet)
        if not Path(args.video).is_file():
            return error(f"video not found: {args.video}")
        labels = labels_for_video(load_speaker_labels(args.speakers, args.time_format), args.video) \
            if args.speakers else None
        people = len(args.audio) or (labels.num_people if labels else args.people)
        if labels and labels.num_people != people:
            return error(f"{len(args.audio)} audio tracks but {labels.num_people} labelled people in {args.speakers}")
        tracks_audio = [load_audio(path, SAMPLE_RATE) for path in args.audio]
        data = read_video(args.video)
        if not tracks_audio:
            if data.audio is None:
                return error(f"{args.video} has no audio: pass one --audio track per person")
            # No per-person tracks: every face is measured against the video's own (mixed) soundtrack.
            tracks_audio = [resample(data.audio.mean(axis=0), data.sample_rate, SAMPLE_RATE)] * people
        source = get_landmark_source(args.backend, args.insightface_dir)
    except (MissingWeightsError, FileNotFoundError, SpeakerLabelError, AudioError, DetectorUnavailable,
            KeyError, ValueError) as problem:
        return error(str(problem.args[0]) if isinstance(problem, KeyError) else str(problem))
    tracks = track_faces(data.frames, people, source)
    lost = [i for i in range(people) if not tracks.found()[:, i].any()]
    if lost:
        return error(f"face(s) {lost} never found in {args.video} ({tracks.source}: at most "
                     f"{tracks.counts.max()} faces per frame)", code=1)
    names = list(labels.names) if labels else [f"person_{i}" for i in range(people)]
    if labels:
        intervals = [list(spans) for spans in labels.intervals]
    elif args.vad:
        intervals = [speaking_intervals(wave, SAMPLE_RATE) for wave in tracks_audio]
    else:
        intervals = None
    report = {"video": Path(args.video).name, "fps": data.fps, "intervals_from": "speakers" if labels else
              ("vad" if args.vad else None), **evaluate_sync(model, data.frames, data.fps, tracks.boxes, tracks_audio,
                                                              intervals, names)}
    if args.json:
        _print_json(report)
    else:
        for speaker in report["speakers"]:
            sync = speaker["sync"]
            print(f"{speaker['name']}: Sync-C {format_number(sync['sync_c'], 3)}  "
                  f"Sync-D {format_number(sync['sync_d'], 3)}  offset {sync['offset']:+d}  "
                  f"Sync-C* {format_number(speaker['sync_c_star'], 3)}"
                  + (f"  ({len(speaker['skipped'])} intervals too short)" if speaker["skipped"] else ""))
        print(f"{report['video']}: Sync-C {format_number(report['sync_c'], 3)}  "
              f"Sync-D {format_number(report['sync_d'], 3)}  Sync-C* {format_number(report['sync_c_star'], 3)}")
    return 0


# --- fid / fvd / id -----------------------------------------------------------------------------

def _media(folder: str) -> tuple[list[Path], list[Path]]:
    from ..evaluation.interactivity import VIDEO_SUFFIXES

    path = Path(folder)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if not p.name.startswith(".")) \
        if path.is_dir() else None
    if files is None:
        raise FileNotFoundError(f"not found: {folder}")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    if not images and not videos:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) or videos in {folder}")
    return images, videos


def _frames(folder: str, stride: int):
    """Every image of a folder and every `stride`-th frame of its videos, as uint8 RGB arrays."""
    from ..faces.detection import load_image
    from ..video.io import read_video

    images, videos = _media(folder)
    for path in images:
        yield load_image(path)
    for path in videos:
        yield from read_video(path).frames[::stride]


def cmd_fid(args: argparse.Namespace) -> int:
    """FID between two folders of images / videos (pytorch-fid's Inception-v3, user-supplied weights)."""
    from ..evaluation.fid import inception_features, load_fid_inception
    from ..evaluation.weights import MissingWeightsError

    try:
        model = load_fid_inception(args.inception)
        for folder in (args.real, args.fake):
            _media(folder)
    except (MissingWeightsError, FileNotFoundError, ValueError) as problem:
        return error(str(problem))
    real = inception_features(model, _frames(args.real, args.frame_stride), args.batch_size)
    fake = inception_features(model, _frames(args.fake, args.frame_stride), args.batch_size)
    return _report_distance(args, "fid", real, fake, "image")


def _report_distance(args, metric: str, real, fake, unit: str, extra: dict | None = None, detail: str = "") -> int:
    """FID / FVD between two feature sets, printed (or as JSON) with the sample counts."""
    from ..evaluation.fid import fid_from_features

    report = {metric: fid_from_features(real, fake), f"real_{unit}s": len(real), f"fake_{unit}s": len(fake),
              **(extra or {})}
    if min(len(real), len(fake)) <= real.shape[1]:
        # Fewer samples than feature dimensions: the covariances are singular and the distance biased/noisy.
        report["note"] = f"fewer {unit}s than the {real.shape[1]} feature dimensions: {metric.upper()} is unreliable"
    if args.json:
        _print_json(report)
    else:
        print(f"{metric.upper()} {report[metric]:.3f} ({len(real)} real, {len(fake)} generated {unit}s{detail})"
              + (f"; note: {report['note']}" if "note" in report else ""))
    return 0


def cmd_fvd(args: argparse.Namespace) -> int:
    """FVD between two folders of videos (I3D TorchScript, user-supplied)."""
    from ..video.io import read_video
    from ..evaluation.fvd import i3d_features, load_i3d, video_clips
    from ..evaluation.weights import MissingWeightsError

    try:
        model = load_i3d(args.i3d)
        sets = []
        for folder in (args.real, args.fake):
            _, videos = _media(folder)
            if not videos:
                raise ValueError(f"no videos in {folder}")
            sets.append([clip for path in videos for clip in video_clips(read_video(path).frames, args.frames,
                                                                           args.clips)])
    except (MissingWeightsError, FileNotFoundError, ValueError) as problem:
        return error(str(problem))
    real, fake = (i3d_features(model, clips, args.batch_size) for clips in sets)
    return _report_distance(args, "fvd", real, fake, "clip", {"frames_per_clip": args.frames},
                            f" of {args.frames} frames")


def cmd_id(args: argparse.Namespace) -> int:
    """Identity similarity: first frame vs the rest (and vs the reference image), per person."""
    from ..faces.detection import DetectorUnavailable, load_image
    from ..video.io import read_video
    from ..evaluation.identity import ArcFaceONNX, DlibFaceEmbedder, identity_scores
    from ..evaluation.landmarks import DlibLandmarks
    from ..evaluation.tracking import track_faces
    from ..evaluation.weights import MissingWeightsError

    try:
        embedder = ArcFaceONNX(args.arcface) if args.embedder == "arcface" else DlibFaceEmbedder()
        if not Path(args.video).is_file():
            return error(f"video not found: {args.video}")
        source = DlibLandmarks()  # 68-point landmarks give the five ArcFace alignment keypoints
        reference = None
        if args.reference:
            image = load_image(args.reference)
            faces = sorted(source.detect(image, 0, args.people), key=lambda f: f.box.area, reverse=True)[:args.people]
            if len(faces) < args.people:
                return error(f"{args.people} people but {len(faces)} faces found in {args.reference}")
            reference = [(image, f.box, f.keypoints5) for f in sorted(faces, key=lambda f: f.box.center[0])]
        data = read_video(args.video)
    except (MissingWeightsError, FileNotFoundError, DetectorUnavailable, ValueError) as problem:
        return error(str(problem))
    tracks = track_faces(data.frames, args.people, source)
    report = {"video": Path(args.video).name, **identity_scores(data.frames, tracks, embedder, reference, args.stride)}
    if args.json:
        _print_json(report)
    else:
        print(f"{report['video']}: identity vs first frame {format_number(report['vs_first'])}, vs reference "
              f"{format_number(report['vs_reference'])} ({report['embedder']})")
    return 0 if report["vs_first"] is not None or report["vs_reference"] is not None else 1


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `eval` and its subcommands on the main parser's subparsers; returns the `eval` parser."""
    evaluation = subparsers.add_parser("eval", help="evaluation metrics (interactivity, sync, fid, fvd, id)",
                                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = evaluation.add_subparsers(dest="metric", required=True)

    inter = sub.add_parser("interactivity", help=cmd_interactivity.__doc__)
    inter.add_argument("--video", action="append", default=[], help="video to score (repeatable)")
    inter.add_argument("--dir", help="score every video in this folder (matched to --speakers by file name)")
    inter.add_argument("--speakers", required=True, help="speaker_duration.json: per video, per person intervals")
    inter.add_argument("--time-format", choices=TIME_FORMATS, default="timecode30",
                       help="how interval values are written: SS.FF at 30 fps (the benchmark's file) or seconds")
    inter.add_argument("--backend", choices=LANDMARK_BACKENDS, default="dlib",
                       help="landmark backend (default dlib: offline, ships with face-recognition-models)")
    inter.add_argument("--insightface-dir", help="insightface model folder (det_*.onnx + 2d106det.onnx)")
    inter.add_argument("--max-bad-fraction", type=float, default=0.1,
                       help="fraction of frames with a missing person or an extra face tolerated (default 0.1)")
    inter.add_argument("--json", action="store_true", help="print one JSON object")
    inter.set_defaults(func=cmd_interactivity)

    sync = sub.add_parser("sync", help=cmd_sync.__doc__)
    sync.add_argument("--video", required=True)
    sync.add_argument("--syncnet", help="syncnet_v2.model (from syncnet_python; never downloaded)")
    sync.add_argument("--audio", action="append", default=[],
                      help="one speech track per person, left to right (default: the video's own audio for every face)")
    sync.add_argument("--speakers", help="speaker_duration.json for Sync-C* (per-speaker intervals)")
    sync.add_argument("--time-format", choices=TIME_FORMATS, default="timecode30")
    sync.add_argument("--vad", action="store_true", help="without --speakers: find speaking intervals with VAD")
    sync.add_argument("--people", type=int, default=1, help="faces to measure when neither --audio nor --speakers")
    sync.add_argument("--backend", choices=LANDMARK_BACKENDS, default="dlib")
    sync.add_argument("--insightface-dir")
    sync.add_argument("--json", action="store_true")
    sync.set_defaults(func=cmd_sync)

    fid = sub.add_parser("fid", help=cmd_fid.__doc__)
    fid.add_argument("--real", required=True, help="folder (or file) of real images / videos")
    fid.add_argument("--fake", required=True, help="folder (or file) of generated images / videos")
    fid.add_argument("--inception", help="pt_inception-2015-12-05-6726825d.pth (pytorch-fid; never downloaded)")
    fid.add_argument("--frame-stride", type=int, default=1, help="use every n-th video frame")
    fid.add_argument("--batch-size", type=int, default=32)
    fid.add_argument("--json", action="store_true")
    fid.set_defaults(func=cmd_fid)

    fvd = sub.add_parser("fvd", help=cmd_fvd.__doc__)
    fvd.add_argument("--real", required=True, help="folder of real videos")
    fvd.add_argument("--fake", required=True, help="folder of generated videos")
    fvd.add_argument("--i3d", help="i3d_torchscript.pt (never downloaded)")
    fvd.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    fvd.add_argument("--clips", choices=["all", "first"], default="all",
                     help="all non-overlapping clips of each video, or only the first")
    fvd.add_argument("--batch-size", type=int, default=8)
    fvd.add_argument("--json", action="store_true")
    fvd.set_defaults(func=cmd_fvd)

    ident = sub.add_parser("id", help=cmd_id.__doc__)
    ident.add_argument("--video", required=True)
    ident.add_argument("--reference", help="the reference image the video was generated from")
    ident.add_argument("--people", type=int, default=1, help="faces in the video (left to right)")
    ident.add_argument("--embedder", choices=["arcface", "dlib"], default="arcface",
                       help="arcface: the paper's kind (needs --arcface); dlib: offline ResNet descriptor")
    ident.add_argument("--arcface", help="ArcFace ONNX file, e.g. buffalo_l/w600k_r50.onnx (never downloaded)")
    ident.add_argument("--stride", type=int, default=1, help="embed every n-th frame")
    ident.add_argument("--json", action="store_true")
    ident.set_defaults(func=cmd_id)
    return evaluation
