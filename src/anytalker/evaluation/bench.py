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

Exit codes: 0 at least one case scored on every requested metric, 1 no case did, 2 bad input
(unknown case, missing weights or reference images, kept videos made with other settings).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..utils.atomic import atomic_write, write_json_atomic

__all__ = ["BENCHMARK_KINDS", "METRICS", "BenchError", "Case", "add_bench_parser", "benchmark_kind", "cmd_bench",
           "evaluate_case", "find_cases", "table_rows", "write_plots", "write_tables"]

BENCHMARK_KINDS = ("interactiveeyes", "clips")
METRICS = ("interactivity", "sync", "identity")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Sidecar keys that must match for a kept video to count as this run's output.
_KEPT_VIDEO_KEYS = ("model", "seed", "num_inference_steps", "fps", "guidance_scale", "audio_guidance_scale")


class BenchError(ValueError):
    """Bad benchmark input: the message says what is wrong and what to pass."""


@dataclass
class Case:
    name: str
    image: Path | None  # reference image (clips: written from the first frame when first needed)
    audio: list[Path]  # one track per person, left to right (clips: the clip itself)
    labels: object | None = None  # SpeakerLabels (InteractiveEyes)
    clip: Path | None = None  # clips benchmark: the source video
    problem: tuple[str, str] | None = None  # (reason, message) when an input is missing

    @property
    def people(self) -> int:
        return len(self.audio)


def natural_key(name: str):
    """interact_2 before interact_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# --- benchmark folders ----------------------------------------------------------------------------

def benchmark_kind(folder: str | Path) -> str:
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"benchmark folder not found: {folder}")
    if (folder / "speaker_duration.json").is_file():
        return "interactiveeyes"
    from .interactivity import video_files

    if video_files(folder):
        return "clips"
    raise BenchError(f"{folder} is neither an InteractiveEyes folder (speaker_duration.json, audio_left/, "
                     "audio_right/) nor a folder of clips (.mp4, .mov, .mkv, .webm, .avi)")


def _reference_image(frames_dir: Path, name: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (frames_dir / f"{name}{suffix}", frames_dir / f"{name}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def find_cases(folder: str | Path, kind: str, image: str | None = None, frames: str | None = None,
               time_format: str = "timecode30") -> list[Case]:
    """Every case of a benchmark folder, in natural order; missing inputs are marked on the case."""
    folder = Path(folder).absolute()  # sidecars record absolute input paths: a rerun from elsewhere matches
    if kind == "clips":
        from .interactivity import video_files

        return [Case(clip.stem, None, [clip], clip=clip) for clip in sorted(video_files(folder),
                                                                            key=lambda p: natural_key(p.stem))]
    from .speakers import load_speaker_labels

    labels = load_speaker_labels(folder / "speaker_duration.json", time_format)
    frames_dir = Path(frames).absolute() if frames else folder / "frames"
    if image is None and not frames_dir.is_dir():
        raise BenchError(
            f"no reference images: {frames_dir} does not exist. The InteractiveEyes release ships no reference "
            "frames (they come from web videos): pass --image IMAGE (one two-person image for every case) or "
            "--frames DIR holding DIR/<case>.png for each case")
    if image is not None and not Path(image).is_file():
        raise BenchError(f"--image not found: {image}")
    cases = []
    for key in sorted(labels, key=natural_key):
        name, entry = Path(key).stem, labels[key]
        if entry.names != ("left", "right"):
            raise BenchError(f"{key}: expected left and right speakers, got {list(entry.names)}")
        audio = [folder / f"audio_{side}" / f"{name}_{side}.wav" for side in entry.names]
        reference = Path(image).absolute() if image is not None else _reference_image(frames_dir, name)
        case = Case(name, reference, audio, labels=entry)
        missing = [str(path) for path in audio if not path.is_file()]
        if missing:
            case.problem = ("missing_audio", f"audio track not found: {', '.join(missing)}")
        elif reference is None:
            case.problem = ("no_reference_image",
                            f"no reference image {name}{{{','.join(IMAGE_SUFFIXES)}}} in {frames_dir}")
        cases.append(case)
    return cases


def select_cases(cases: list[Case], names: str | None, limit: int | None) -> list[Case]:
    if names:
        wanted = [n.strip().removesuffix(".mp4") for n in names.split(",") if n.strip()]
        known = {case.name: case for case in cases}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            sample = ", ".join(sorted(known, key=natural_key)[:3])
            raise BenchError(f"unknown case(s) {', '.join(unknown)}: the benchmark has {len(known)} cases, "
                             f"e.g. {sample}")
        cases = [known[n] for n in dict.fromkeys(wanted)]
    if limit is not None:
        if limit < 1:
            raise BenchError(f"--limit must be >= 1, got {limit}")
        cases = cases[:limit]
    return cases


def _first_frame(clip: Path, out: Path) -> Path:
    """The clip's first frame as a PNG (atomic); raises ValueError when the clip has no readable frame."""
    import av
    from PIL import Image

    try:
        with av.open(str(clip)) as container:
            if not container.streams.video:
                raise ValueError(f"no video stream in {clip}")
            frame = next(container.decode(video=0), None)
            if frame is None:
                raise ValueError(f"no decodable frame in {clip}")
            rgb = frame.to_ndarray(format="rgb24")
    except av.FFmpegError as error:
        raise ValueError(f"not a readable video: {clip} ({error})") from None
    with atomic_write(out) as tmp:
        Image.fromarray(rgb).save(tmp)
    return out


# --- records ----------------------------------------------------------------------------------------

def _jsonable(value):
    """JSON-safe copy: numpy scalars / arrays to Python, NaN and inf to None, paths to strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _write_json(path: Path, obj) -> None:
    write_json_atomic(path, _jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _signature(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _failure_record(case: Case, stage: str, reason: str, message: str) -> dict:
    return {"case": case.name, "status": "failed", "stage": stage,
            "failures": [{"metric": None, "reason": reason, "message": message}], "metrics": {}}


# --- generation ---------------------------------------------------------------------------------------

def _load_model(args):
    """(pipeline, device), ready to run (the CLI's loading, scheduler and offload options)."""
    from ..cli import ready_pipeline

    return ready_pipeline(args)


def _expected_sidecar(case: Case, args) -> dict:
    expected = {"model": args.model, "seed": args.seed, "num_inference_steps": args.steps, "fps": args.fps,
                "guidance_scale": args.guidance_scale, "audio_guidance_scale": args.audio_guidance_scale}
    if args.size:
        expected["height"], expected["width"] = (int(v) for v in args.size.split("x"))
    return expected


def _same_model(a, b) -> bool:
    if a == b:
        return True
    try:
        return Path(a).resolve() == Path(b).resolve() and Path(a).exists()
    except (TypeError, OSError):
        return False


def _kept_video_mismatch(case: Case, sidecar: dict, args) -> str | None:
    """Why a kept video is not this run's output (None when it is)."""
    differences = []
    for key, want in _expected_sidecar(case, args).items():
        have = sidecar.get(key)
        if key == "model" and _same_model(have, want):
            continue
        if have != want:
            differences.append(f"{key}={have!r} (this run: {want!r})")
    task = sidecar.get("task") or {}
    if case.clip is None and task.get("image") and Path(task["image"]) != case.image:  # clips: derived
        differences.append(f"reference image {task['image']} (this run: {case.image})")
    if task.get("audio") and [Path(a) for a in task["audio"]] != case.audio:
        differences.append(f"audio {task['audio']} (this run: {[str(a) for a in case.audio]})")
    return ", ".join(differences) or None


# --- evaluation ----------------------------------------------------------------------------------------

@dataclass
class MetricContext:
    metrics: tuple[str, ...]
    source: object  # LandmarkSource
    config: object  # InteractivityConfig
    syncnet: object | None = None
    embedder: object | None = None
    settings: dict = field(default_factory=dict)  # what a kept metric record must match


def _metric_context(args, metrics: tuple[str, ...]) -> MetricContext:
    """Loads every metric resource up front, so a missing file fails before any generation."""
    from .interactivity import InteractivityConfig
    from .landmarks import get_landmark_source

    source = get_landmark_source(args.backend, args.insightface_dir)
    config = InteractivityConfig(max_bad_fraction=args.max_bad_fraction)
    syncnet = embedder = None
    settings = {"metrics": sorted(metrics), "backend": args.backend, "max_bad_fraction": args.max_bad_fraction,
                "time_format": args.time_format}
    if "sync" in metrics:
        from .syncnet import load_syncnet
        from .weights import require_weights

        syncnet = load_syncnet(args.syncnet)
        path = require_weights("syncnet", args.syncnet)
        settings["syncnet"] = {"path": str(path.resolve()), **_signature(path)}
    if "identity" in metrics:
        from .identity import ArcFaceONNX, DlibFaceEmbedder

        embedder = ArcFaceONNX(args.arcface) if args.embedder == "arcface" else DlibFaceEmbedder()
        settings["identity"] = {"embedder": embedder.name, "stride": args.id_stride,
                                "arcface": str(Path(args.arcface).resolve()) if args.arcface else None}
    return MetricContext(metrics, source, config, syncnet, embedder, settings)


def _reference_faces(case: Case, ctx: MetricContext):
    """Per person (image, box, keypoints5) of the reference image, left to right, for identity."""
    from ..faces.detection import load_image

    image = load_image(case.image)
    faces = sorted(ctx.source.detect(image, 0, case.people), key=lambda f: f.box.area, reverse=True)[:case.people]
    if len(faces) < case.people:
        raise ValueError(f"{case.people} people but {len(faces)} faces found in the reference {case.image}")
    return [(image, f.box, f.keypoints5) for f in sorted(faces, key=lambda f: f.box.center[0])]


def evaluate_case(case: Case, video: Path, ctx: MetricContext) -> dict:
    """Every requested metric of one generated video; failures are recorded per metric, never raised."""
    from ..audio import AudioError, load_audio
    from ..video.io import read_video
    from .interactivity import person_motion, score_tracks
    from .tracking import track_faces

    record = {"case": case.name, "video": str(video), "metrics": {}, "failures": []}

    def fail(metric, reason, message):
        record["failures"].append({"metric": metric, "reason": reason, "message": message})

    try:
        data = read_video(video)
    except (OSError, ValueError) as error:
        for metric in ctx.metrics:
            fail(metric, "unreadable_video", f"{video}: {error}")
        return record
    record["frames"], record["fps"] = len(data.frames), data.fps
    if not len(data.frames):
        for metric in ctx.metrics:
            fail(metric, "unreadable_video", f"{video}: no frames")
        return record
    try:
        tracks = track_faces(data.frames, case.people, ctx.source)
    except (ValueError, RuntimeError) as error:  # e.g. a source giving a varying point set
        for metric in ctx.metrics:
            fail(metric, "tracking_error", f"{type(error).__name__}: {error}")
        return record
    names = list(case.labels.names) if case.labels is not None else [f"person_{i}" for i in range(case.people)]
    found = tracks.found()

    if "interactivity" in ctx.metrics:
        result = score_tracks(tracks, case.labels, data.fps, video.name, ctx.config)
        record["metrics"]["interactivity"] = result.to_dict()
        if result.failure:
            fail("interactivity", result.failure, result.message)
        motion = []
        for person, name in enumerate(names):
            displacement, _ = person_motion(tracks.boxes[:, person], tracks.points[:, person], ctx.config)
            motion.append({"name": name, "displacement": displacement,
                           "listening": ~case.labels.speaking(person, len(data.frames), data.fps)})
        record["motion"] = {"fps": data.fps, "unit": "crop px per frame (224-px crop)", "people": motion}

    lost = [names[p] for p in range(case.people) if not found[:, p].any()]
    lost_message = (f"face(s) {', '.join(lost)} never found ({tracks.source}: at most "
                    f"{int(tracks.counts.max(initial=0))} faces in any of {tracks.num_frames} frames)")

    if "sync" in ctx.metrics:
        from .sync import SAMPLE_RATE, evaluate_sync

        if lost:
            fail("sync", "face_not_found", lost_message)
        else:
            try:
                waves = [load_audio(path, SAMPLE_RATE) for path in case.audio]
                intervals = [list(spans) for spans in case.labels.intervals] if case.labels is not None else None
                report = evaluate_sync(ctx.syncnet, data.frames, data.fps, tracks.boxes, waves, intervals, names)
                record["metrics"]["sync"] = report
                if report["sync_c"] is None:
                    fail("sync", "no_sync_window", "no SyncNet window could be scored")
            except (AudioError, ValueError, RuntimeError) as error:
                fail("sync", "sync_error", str(error))

    if "identity" in ctx.metrics:
        from .identity import identity_scores

        if lost:
            fail("identity", "face_not_found", lost_message)
        else:
            try:
                reference = _reference_faces(case, ctx) if case.image is not None else None
                stride = ctx.settings["identity"]["stride"]
                report = identity_scores(data.frames, tracks, ctx.embedder, reference, stride)
                record["metrics"]["identity"] = report
                if report["vs_first"] is None and report["vs_reference"] is None:
                    fail("identity", "no_identity_score", "no frame pair and no reference to compare")
            except (OSError, ValueError, RuntimeError) as error:
                fail("identity", "identity_error", str(error))
    return record


# --- tables ----------------------------------------------------------------------------------------------

def _columns(metrics: Sequence[str], people_names: Sequence[str], kind: str) -> list[str]:
    columns = []
    if "interactivity" in metrics:
        columns += ["interactivity"] + [f"interactivity_{name}" for name in people_names]
    if "sync" in metrics:
        columns += ["sync_c", "sync_d"] + (["sync_c_star"] if kind == "interactiveeyes" else [])
    if "identity" in metrics:
        columns += ["id_vs_first", "id_vs_reference"]
    return columns


def _values(record: dict) -> dict:
    """The numeric columns of one case record."""
    values = {}
    metrics = record.get("metrics", {})
    inter = metrics.get("interactivity")
    if inter:
        values["interactivity"] = inter.get("score")
        for person in inter.get("people", []):
            values[f"interactivity_{person['name']}"] = person.get("score")
    sync = metrics.get("sync")
    if sync:
        values.update(sync_c=sync.get("sync_c"), sync_d=sync.get("sync_d"), sync_c_star=sync.get("sync_c_star"))
    ident = metrics.get("identity")
    if ident:
        values.update(id_vs_first=ident.get("vs_first"), id_vs_reference=ident.get("vs_reference"))
    return values


def _failure_text(record: dict, with_message: bool = False) -> str:
    parts = []
    for failure in record.get("failures", []):
        label = f"{failure['metric']}: {failure['reason']}" if failure.get("metric") else \
            f"{record.get('stage', 'input')}: {failure['reason']}"
        parts.append(label + (f" ({failure['message']})" if with_message and failure.get("message") else ""))
    return "; ".join(parts)


def table_rows(records: Sequence[dict], columns: Sequence[str]) -> list[dict]:
    rows = []
    for record in records:
        values = _values(record)
        rows.append({"case": record["case"], "status": record["status"], **{c: values.get(c) for c in columns},
                     "frames": record.get("frames"), "fps": record.get("fps"),
                     "failure": _failure_text(record), "message": " | ".join(
                         f.get("message") or "" for f in record.get("failures", []))})
    return rows


def summarize_records(records: Sequence[dict], columns: Sequence[str]) -> dict:
    failures: dict[str, int] = {}
    for record in records:
        for failure in record.get("failures", []):
            key = f"{failure['metric'] or record.get('stage')}:{failure['reason']}"
            failures[key] = failures.get(key, 0) + 1
    means, counts = {}, {}
    for column in columns:
        values = [v for v in (_values(r).get(column) for r in records) if v is not None]
        counts[column] = len(values)
        means[column] = float(np.mean(values)) if values else None
    return {
        "cases": len(records),
        "scored": sum(r["status"] == "ok" for r in records),
        "failed": sum(r["status"] != "ok" for r in records),
        "failures": dict(sorted(failures.items())),
        "failed_cases": {r["case"]: _failure_text(r, with_message=True) for r in records if r["status"] != "ok"},
        "means": means,
        "counts": counts,
    }


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_tables(out: Path, records: Sequence[dict], columns: Sequence[str], summary: dict, header: dict) -> None:
    """OUT/results.csv (per-case rows), OUT/results.md (per-case rows, mean and count rows, failures)
    and OUT/summary.json; all written atomically."""
    rows = table_rows(records, columns)
    fields = ["case", "status", *columns, "frames", "fps", "failure", "message"]
    with atomic_write(out / "results.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v)
                             for k, v in row.items()})

    shown = ["case", "status", *columns, "failure"]
    lines = [f"# {header['title']}", ""]
    lines += [f"- {key}: {value}" for key, value in header["details"].items()]
    lines += ["", "| " + " | ".join(shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(_fmt(row[c])) if c in columns else _md_cell(row[c] or "")
                                       for c in shown) + " |")
    lines.append("| **mean** | | " + " | ".join(_fmt(summary["means"][c]) for c in columns) + " | |")
    lines.append("| n | | " + " | ".join(str(summary["counts"][c]) for c in columns) + " | |")
    lines += ["", (f"Means are over the cases that have a value (row n). {summary['scored']} of {summary['cases']} "
                   f"cases scored on every metric; {summary['failed']} failed.")]
    if summary["failures"]:
        lines += ["", "Failures by reason: " + ", ".join(f"{k} {v}" for k, v in summary["failures"].items()), ""]
        lines += [f"- {_md_cell(case)}: {_md_cell(text)}" for case, text in summary["failed_cases"].items()]
    with atomic_write(out / "results.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_json(out / "summary.json", {**header["details"], **summary})


# --- plots ---------------------------------------------------------------------------------------------

def _save_figure(figure, path: Path) -> None:
    with atomic_write(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def write_plots(out: Path, records: Sequence[dict], columns: Sequence[str]) -> tuple[list[Path], str | None]:
    """Per-clip bars of each metric column group and, per case, each person's eye/brow motion over time
    (listening steps solid, speaking intervals shaded). Returns (written files, notice); the notice
    says why plots are missing (matplotlib not installed) or which cases have no motion plot."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend state, no display needed
    except ImportError:
        return [], "matplotlib is not installed: no plots written (pip install matplotlib)"
    folder = out / "plots"
    written, skipped = [], []
    names = [r["case"] for r in records]
    x = np.arange(len(records))

    groups = {}
    for column in columns:
        head = "interactivity" if column.startswith("interactivity") else \
            "sync" if column.startswith("sync") else "identity"
        groups.setdefault(head, []).append(column)
    for head, group in groups.items():
        figure = Figure(figsize=(max(6.0, 0.6 * len(records) * len(group) ** 0.5 + 2), 4))
        axes = figure.add_subplot()
        width = 0.8 / len(group)
        low = high = 0.0
        for k, column in enumerate(group):
            values = [_values(r).get(column) for r in records]
            heights = [v if v is not None else 0.0 for v in values]  # failed: no bar, marked below
            axes.bar(x + (k - (len(group) - 1) / 2) * width, heights, width, label=column)
            low, high = min(low, *heights), max(high, *heights)
        axes.set_ylim(low * 1.1, high * 1.1 if high > 0 else 1.0)
        for i, record in enumerate(records):
            if all(_values(record).get(c) is None for c in group):
                axes.text(i, 0, "failed", rotation=90, ha="center", va="bottom", fontsize=8, color="red")
        axes.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
        axes.set_title(f"{head} per clip" + (" (failed cases marked)" if any(
            all(_values(r).get(c) is None for c in group) for r in records) else ""))
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = folder / f"{head}.png"
        _save_figure(figure, path)
        written.append(path)

    for record in records:
        motion = record.get("motion")
        if not motion:
            continue
        series = [(p["name"], np.array([np.nan if v is None else v for v in p["displacement"]], float),
                   np.asarray(p["listening"], bool)) for p in motion["people"]]
        if not any(np.isfinite(d[listening]).any() for _, d, listening in series):
            reason = _failure_text(record) or "no measurable listening step"
            skipped.append(f"{record['case']} ({reason})")
            continue
        figure = Figure(figsize=(8, 1.8 * len(series) + 0.6))
        score = _values(record).get("interactivity")
        for k, (name, displacement, listening) in enumerate(series):
            axes = figure.add_subplot(len(series), 1, k + 1)
            t = np.arange(len(displacement)) / motion["fps"]
            axes.plot(t, displacement, color="0.75", linewidth=0.8, label="all frames")
            axes.plot(t, np.where(listening, displacement, np.nan), color=f"C{k}", linewidth=1.5, label="listening")
            speaking = ~listening
            edges = np.flatnonzero(np.diff(np.concatenate([[0], speaking.astype(int), [0]])))
            for start, stop in zip(edges[::2], edges[1::2], strict=True):
                axes.axvspan(t[start], t[stop - 1], color="0.9", zorder=0)
            axes.set_ylabel(f"{name}\npx / frame", fontsize=8)
            if k == 0:
                axes.set_title(f"{record['case']}: eye/brow motion (shaded: speaking; interactivity "
                               f"{_fmt(score)})", fontsize=9)
                axes.legend(fontsize=7, loc="upper right")
        axes.set_xlabel("time (s)")
        figure.tight_layout()
        path = folder / f"motion_{record['case']}.png"
        _save_figure(figure, path)
        written.append(path)
    notice = ("no motion plot for: " + ", ".join(skipped)) if skipped else None
    return written, notice


# --- the command -----------------------------------------------------------------------------------------

def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _metrics_for(args, kind: str) -> tuple[str, ...]:
    if args.metrics:
        metrics = tuple(dict.fromkeys(m.strip() for m in args.metrics.split(",") if m.strip()))
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise BenchError(f"--metrics {args.metrics!r}: choose from {', '.join(METRICS)}")
    else:
        metrics = ("interactivity",) if kind == "interactiveeyes" else ("identity",)
        metrics += ("sync",) if args.syncnet else ()
    if "interactivity" in metrics and kind != "interactiveeyes":
        raise BenchError("interactivity needs speaker intervals: only an InteractiveEyes folder "
                         "(speaker_duration.json) has them")
    if "sync" in metrics and not args.syncnet:
        raise BenchError("the sync metric needs SyncNet weights: pass --syncnet PATH/syncnet_v2.model "
                         "(nothing is downloaded)")
    return metrics


def cmd_bench(args: argparse.Namespace) -> int:
    """Generates every case of a benchmark (resumable), evaluates them, writes CSV, markdown and plots."""
    from tqdm import tqdm

    from ..cli import _settings_error, run_generation
    from ..faces.detection import DetectorUnavailable
    from ..pipeline.tasks import GenerationTask, prepare_task, write_result
    from ..utils.checkpoints import CheckpointError
    from .speakers import SpeakerLabelError
    from .weights import MissingWeightsError

    problem = _settings_error(args)
    if problem:
        return _error(problem)
    out = Path(args.out).absolute()
    if args.id_stride < 1:
        return _error(f"--id-stride must be >= 1, got {args.id_stride}")
    try:
        kind = benchmark_kind(args.benchmark)
        if kind == "clips" and (args.image or args.frames):
            raise BenchError("--image / --frames are for InteractiveEyes: a clip's reference is its first frame")
        metrics = _metrics_for(args, kind)
        all_cases = find_cases(args.benchmark, kind, args.image, args.frames, args.time_format)
        cases = select_cases(all_cases, args.cases, args.limit)
        if not cases:
            raise BenchError(f"no cases in {args.benchmark}")
        ctx = _metric_context(args, metrics)
    except (BenchError, SpeakerLabelError, MissingWeightsError, DetectorUnavailable, FileNotFoundError,
            ValueError) as error:
        return _error(str(error))

    videos, metrics_dir = out / "videos", out / "metrics"
    records: dict[str, dict] = {}
    to_generate, mismatched, notes, kept = [], [], [], 0
    # 1. Inputs and kept videos; everything is checked before a model is loaded.
    for case in cases:
        if case.problem:
            records[case.name] = _failure_record(case, "input", *case.problem)
            continue
        if case.clip is not None:
            case.image = out / "references" / f"{case.name}.png"
            if not case.image.is_file():
                try:
                    _first_frame(case.clip, case.image)
                except ValueError as error:
                    records[case.name] = _failure_record(case, "input", "unreadable_clip", str(error))
                    continue
        video = videos / f"{case.name}.mp4"
        sidecar = _read_json(video.with_suffix(".json")) if video.is_file() else None
        if sidecar is not None and not args.overwrite:
            why = _kept_video_mismatch(case, sidecar, args)
            if why:
                mismatched.append(f"{case.name}: {why}")
            else:
                kept += 1
            continue
        if video.is_file() and not args.overwrite:  # write_result writes the sidecar last: an interrupted write
            notes.append(f"{case.name}: {video.name} has no readable sidecar: regenerated")
        task = GenerationTask(case.name, str(case.image), [str(a) for a in case.audio], args.prompt,
                              audio_mode="pad")
        try:
            prepared = prepare_task(task, order="left-to-right", detectors=tuple(args.detector.split(","))
                                    if args.detector else None)
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            records[case.name] = _failure_record(case, "input", "invalid_input", str(error))
            continue
        to_generate.append((case, prepared, video))
    if mismatched:
        return _error(f"{len(mismatched)} kept video(s) in {videos} were made with other settings "
                      "(pass --overwrite to regenerate them, or the same settings):\n       "
                      + "\n       ".join(mismatched))
    if not args.quiet:
        print(f"{len(cases)} cases: {kept} videos kept, {len(to_generate)} to generate, "
              f"{sum(r['stage'] == 'input' for r in records.values())} with input failures")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    # 2. Generation: the model is loaded only when something is to be generated.
    if to_generate:
        try:
            pipe, device = _load_model(args)
        except (CheckpointError, ValueError, OSError) as error:
            return _error(str(error))
        for case, prepared, video in tqdm(to_generate, desc="generating", unit="case", disable=args.quiet):
            started = time.perf_counter()
            try:
                frames, info = run_generation(pipe, device, prepared, args)
                write_result(video, frames, args.fps, prepared, {**info, "benchmark_case": case.name,
                                                            "generation_s": time.perf_counter() - started})
            except (RuntimeError, ValueError, OSError) as error:  # torch OOM is a RuntimeError
                records[case.name] = _failure_record(case, "generation", "generation_error",
                                                     f"{type(error).__name__}: {error}")

    # 3. Evaluation: kept metric records are reused when video and settings are unchanged.
    to_evaluate = [case for case in cases if case.name not in records]
    reused = 0
    for case in tqdm(to_evaluate, desc="evaluating", unit="case", disable=args.quiet):
        video, path = videos / f"{case.name}.mp4", metrics_dir / f"{case.name}.json"
        if not video.is_file():  # a generation that wrote nothing without raising
            records[case.name] = _failure_record(case, "generation", "no_video", f"{video} was not written")
            continue
        signature = _signature(video)
        kept_record = None if args.reevaluate else _read_json(path)
        if kept_record and kept_record.get("video_signature") == signature and \
                kept_record.get("settings") == _jsonable(ctx.settings):
            records[case.name] = kept_record
            reused += 1
            continue
        record = evaluate_case(case, video, ctx)
        record.update(status="failed" if record["failures"] else "ok", stage="evaluation" if record["failures"]
                      else None, video_signature=signature, settings=ctx.settings)
        records[case.name] = _jsonable(record)
        _write_json(path, record)
    for case in cases:  # input and generation failures are recorded too (retried on the next run)
        if records[case.name].get("stage") in ("input", "generation"):
            _write_json(metrics_dir / f"{case.name}.json", records[case.name])

    # 4. Tables and plots.
    ordered = [records[case.name] for case in cases]
    people_names = ["left", "right"] if kind == "interactiveeyes" else []
    columns = _columns(metrics, people_names, kind)
    summary = summarize_records(ordered, columns)
    plots, notice = write_plots(out, ordered, columns)
    name = Path(args.benchmark).absolute().name
    header = {"title": f"AnyTalker benchmark: {name}" + (f" ({kind})" if name.lower() != kind else ""), "details": {
        "benchmark": str(args.benchmark), "kind": kind, "model": args.model,
        "selected": f"{len(cases)} of {len(all_cases)} cases",
        "steps": args.steps, "size": args.size or "default", "seed": args.seed, "fps": args.fps,
        "metrics": ", ".join(metrics), "landmarks": args.backend,
        "reference": str(args.image) if args.image else "first frame of each clip" if kind == "clips"
        else str(Path(args.frames or Path(args.benchmark) / "frames")),
    }}
    summary["plots"] = [str(p.relative_to(out)) for p in plots]
    summary["plots_note"] = notice
    write_tables(out, ordered, columns, summary, header)
    if notice:
        print(f"note: {notice}", file=sys.stderr)
    if not args.quiet:
        for record in ordered:
            values = _values(record)
            shown = "  ".join(f"{c} {_fmt(values.get(c))}" for c in columns if values.get(c) is not None)
            status = "ok" if record["status"] == "ok" else f"FAILED {_failure_text(record)}"
            print(f"{record['case']}: {shown}{'  ' if shown else ''}{status}")
        means = "  ".join(f"{c} {_fmt(summary['means'][c])} (n={summary['counts'][c]})" for c in columns)
        print(f"mean: {means}; scored {summary['scored']} of {summary['cases']}, failed {summary['failed']}"
              + (f" ({', '.join(f'{k} {v}' for k, v in summary['failures'].items())})" if summary["failures"] else ""))
        print(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {len(plots)} plot(s); "
              f"{reused} metric record(s) reused")
    return 0 if summary["scored"] else 1


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `bench` on the main parser's subparsers; returns its parser."""
    bench = subparsers.add_parser("bench", help=cmd_bench.__doc__, description=__doc__,
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
    bench.add_argument("--backend", choices=["dlib", "mediapipe", "insightface"], default="dlib",
                       help="landmark backend for tracking and Interactivity (default dlib, offline)")
    bench.add_argument("--insightface-dir", help="insightface model folder (det_*.onnx + 2d106det.onnx)")
    bench.add_argument("--max-bad-fraction", type=float, default=0.1,
                       help="Interactivity: fraction of frames with a missing person / extra face tolerated")
    bench.add_argument("--time-format", choices=["timecode30", "seconds"], default="timecode30",
                       help="speaker_duration.json values: SS.FF at 30 fps (the benchmark's file) or seconds")
    bench.add_argument("--embedder", choices=["dlib", "arcface"], default="dlib",
                       help="identity embedder: dlib (offline, default) or arcface (needs --arcface)")
    bench.add_argument("--arcface", help="ArcFace ONNX file, e.g. buffalo_l/w600k_r50.onnx (never downloaded)")
    bench.add_argument("--id-stride", type=int, default=5, help="identity: embed every n-th frame (default 5)")
    bench.add_argument("--overwrite", action="store_true", help="regenerate every selected case")
    bench.add_argument("--reevaluate", action="store_true", help="recompute every metric record")
    # Generation settings, as `anytalker generate`.
    bench.add_argument("--prompt", default="", help="text prompt for every case")
    bench.add_argument("--detector", help="face detector chain for the reference images (as generate)")
    from ..cli.common import add_sampling_arguments

    add_sampling_arguments(bench)
    bench.add_argument("--quiet", action="store_true", help="no progress bars or messages (notices still print)")
    bench.set_defaults(func=cmd_bench)
    return bench
