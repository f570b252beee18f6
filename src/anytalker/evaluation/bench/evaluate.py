"""Scoring the generated videos: the metric resources (loaded once, before any generation) and
every requested metric of one case, with each failure recorded per metric and never raised."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .cases import Case
from .resume import file_signature

from .settings import METRICS, BenchSettings

__all__ = ["METRICS", "MetricContext", "evaluate_case", "failure_record", "metric_context", "reference_faces"]



def failure_record(case: Case, stage: str, reason: str, message: str) -> dict:
    """The record of a case that failed before evaluation (stage: input or generation)."""
    return {"case": case.name, "status": "failed", "stage": stage,
            "failures": [{"metric": None, "reason": reason, "message": message}], "metrics": {}}


@dataclass
class MetricContext:
    metrics: tuple[str, ...]
    source: object  # LandmarkSource
    config: object  # InteractivityConfig
    syncnet: object | None = None
    embedder: object | None = None
    settings: dict = field(default_factory=dict)  # what a kept metric record must match


def metric_context(bench: BenchSettings, metrics: tuple[str, ...]) -> MetricContext:
    """Loads every metric resource up front, so a missing file fails before any generation."""
    from ..interactivity import InteractivityConfig
    from ..landmarks import get_landmark_source

    source = get_landmark_source(bench.backend, bench.insightface_dir)
    config = InteractivityConfig(max_bad_fraction=bench.max_bad_fraction)
    syncnet = embedder = None
    settings = {"metrics": sorted(metrics), "backend": bench.backend, "max_bad_fraction": bench.max_bad_fraction,
                "time_format": bench.time_format}
    if "sync" in metrics:
        from ..syncnet import load_syncnet
        from ..weights import require_weights

        syncnet = load_syncnet(bench.syncnet)
        path = require_weights("syncnet", bench.syncnet)
        settings["syncnet"] = {"path": str(path.resolve()), **file_signature(path)}
    if "identity" in metrics:
        from ..identity import ArcFaceONNX, DlibFaceEmbedder

        embedder = ArcFaceONNX(bench.arcface) if bench.embedder == "arcface" else DlibFaceEmbedder()
        settings["identity"] = {"embedder": embedder.name, "stride": bench.id_stride,
                                "arcface": str(Path(bench.arcface).resolve()) if bench.arcface else None}
    return MetricContext(metrics, source, config, syncnet, embedder, settings)


def reference_faces(case: Case, ctx: MetricContext):
    """Per person (image, box, keypoints5) of the reference image, left to right, for identity."""
    from ...faces.detection import load_image

    image = load_image(case.image)
    faces = sorted(ctx.source.detect(image, 0, case.people), key=lambda f: f.box.area, reverse=True)[:case.people]
    if len(faces) < case.people:
        raise ValueError(f"{case.people} people but {len(faces)} faces found in the reference {case.image}")
    return [(image, f.box, f.keypoints5) for f in sorted(faces, key=lambda f: f.box.center[0])]


def evaluate_case(case: Case, video: Path, ctx: MetricContext) -> dict:
    """Every requested metric of one generated video; failures are recorded per metric, never raised."""
    from ...audio import AudioError, load_audio
    from ...video.io import read_video
    from ..interactivity import person_motion, score_tracks
    from ..tracking import track_faces

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
        from ..sync import SAMPLE_RATE, evaluate_sync

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
        from ..identity import identity_scores

        if lost:
            fail("identity", "face_not_found", lost_message)
        else:
            try:
                reference = reference_faces(case, ctx) if case.image is not None else None
                stride = ctx.settings["identity"]["stride"]
                report = identity_scores(data.frames, tracks, ctx.embedder, reference, stride)
                record["metrics"]["identity"] = report
                if report["vs_first"] is None and report["vs_reference"] is None:
                    fail("identity", "no_identity_score", "no frame pair and no reference to compare")
            except (OSError, ValueError, RuntimeError) as error:
                fail("identity", "identity_error", str(error))
    return record


