"""Interactivity (AnyTalker, arXiv 2511.23475): how much listeners move their eyes and eyebrows.

The release's definition, step by step, for each person p (faces ordered left to right):

1. Box centres per frame. A centre farther than `outlier_px` (10) pixels from the last stable centre
   is replaced by it (a detector glitch must not move the crop); otherwise it becomes the stable one.
2. The centres are smoothed with an exponential moving average,
   smooth_t = ema_alpha * smooth_{t-1} + (1 - ema_alpha) * centre_t, ema_alpha = 0.7.
3. One square crop side per person and video: S = max(min_crop, largest box side over the video),
   min_crop = 224. The crop is centred on the smoothed centre.
4. The eye/eyebrow landmarks (22 points for dlib / MediaPipe) are mapped into the crop and scaled to
   224 px: q = (point - (smooth - S / 2)) * 224 / S.
5. A landmark set whose mean point distance from the last stable set exceeds `outlier_px` (10, in
   crop pixels) is replaced by the stable set; otherwise it becomes the stable set.
6. Per step t (frame t-1 -> t): d_t = mean over the points of the L2 displacement of q.
7. A step counts when person p is NOT speaking at t = frame / fps (speaker intervals, inclusive
   bounds); each counted step weighs 1 / fps.

    person score  = sum_t d_t / fps / sum_t 1 / fps           (over p's listening steps)
    video score   = sum_p sum_t d_t / fps / sum_p sum_t 1 / fps  (pooled over all people)

i.e. the mean eye/brow motion per frame in 224-px crop pixels while listening. The crop is never
clipped to the image: landmarks are mapped arithmetically, no pixels are cut.

Steps where the person was not found in frame t or t-1 cannot be measured: they are left out and
counted (`unmeasured_steps`), never scored as 0. A video fails, with the reason, when:
- `face_count_changed`: fewer than N faces in every frame, or more than N faces in more than
  `max_bad_fraction` of the frames;
- `lost_track`: a person is missing in more than `max_bad_fraction` of the frames;
- `no_listening_frames`: no measurable listening step for anybody.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .landmarks import LandmarkSource
from .speakers import SpeakerLabels, labels_for_video
from .tracking import Tracks, track_faces

__all__ = ["FAILURE_REASONS", "InteractivityConfig", "InteractivityResult", "PersonScore", "person_motion",
           "score_tracks", "score_video", "score_videos", "summarize"]

FAILURE_REASONS = ("face_count_changed", "lost_track", "no_listening_frames", "no_speaker_labels", "unreadable_video")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


@dataclass(frozen=True)
class InteractivityConfig:
    crop_size: int = 224  # landmarks are scaled to this crop side
    min_crop: int = 224  # smallest crop side in video pixels
    ema_alpha: float = 0.7  # weight of the previous smoothed centre
    outlier_px: float = 10.0  # replacement threshold for centres (video px) and landmark sets (crop px)
    max_bad_fraction: float = 0.1  # frames with a missing person / an extra face tolerated before failing

    def __post_init__(self):
        if not 0 <= self.ema_alpha < 1:
            raise ValueError(f"ema_alpha must be in [0, 1), got {self.ema_alpha}")
        if self.crop_size <= 0 or self.min_crop <= 0 or self.outlier_px <= 0:
            raise ValueError("crop_size, min_crop and outlier_px must be positive")
        if not 0 <= self.max_bad_fraction < 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1), got {self.max_bad_fraction}")


@dataclass
class PersonScore:
    name: str
    score: float | None  # None when the person has no measurable listening step (see `reason`)
    listening_s: float  # measured listening time: counted steps / fps
    steps: int  # listening steps that were measured
    unmeasured_steps: int  # listening steps left out: face not found in frame t or t-1
    missing_frames: int
    replaced_landmark_sets: int
    replaced_centres: int
    crop_side: float | None
    reason: str | None = None


@dataclass
class InteractivityResult:
    video: str
    score: float | None
    people: list[PersonScore]
    fps: float | None
    frames: int
    backend: str
    failure: str | None = None  # one of FAILURE_REASONS
    message: str | None = None
    frames_with_extra_faces: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _stabilise(values: np.ndarray, valid: np.ndarray, threshold: float, distance) -> tuple[np.ndarray, int]:
    """The release's outlier rule: a value farther than `threshold` from the last stable value is
    replaced by it, otherwise it becomes the stable value. Invalid entries take the stable value."""
    out = values.copy()
    stable, replaced = None, 0
    for t in range(len(values)):
        if not valid[t]:
            if stable is not None:
                out[t] = stable
            continue
        if stable is not None and distance(values[t], stable) > threshold:
            out[t] = stable
            replaced += 1
        else:
            stable = values[t]
    return out, replaced


def person_motion(boxes: np.ndarray, points: np.ndarray, config: InteractivityConfig = InteractivityConfig()):
    """Per-step eye/brow displacement of one person, in crop pixels.

    boxes float [F, 4], points float [F, P, 2] (NaN where not found). Returns (displacement float [F],
    NaN at step 0 and where frame t or t-1 is missing; info dict with crop_side, replaced counts).
    """
    valid = np.isfinite(boxes).all(axis=1) & np.isfinite(points).all(axis=(1, 2))
    frames = len(boxes)
    displacement = np.full(frames, np.nan)
    info = {"crop_side": None, "replaced_landmark_sets": 0, "replaced_centres": 0}
    if not valid.any():
        return displacement, info
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)  # [F, 2]
    centres, info["replaced_centres"] = _stabilise(centres, valid, config.outlier_px,
                                                   lambda a, b: float(np.linalg.norm(a - b)))
    first = int(np.argmax(valid))
    smooth = np.empty_like(centres)
    smooth[:first + 1] = centres[first]
    for t in range(first + 1, frames):  # missing frames carry the stable centre (step 1), so no NaN here
        smooth[t] = config.ema_alpha * smooth[t - 1] + (1 - config.ema_alpha) * centres[t]
    sides = np.maximum(boxes[valid, 2] - boxes[valid, 0], boxes[valid, 3] - boxes[valid, 1])
    side = max(float(config.min_crop), math.ceil(float(sides.max())))
    info["crop_side"] = side
    crop = (points - (smooth - side / 2)[:, None, :]) * (config.crop_size / side)  # [F, P, 2]
    crop, info["replaced_landmark_sets"] = _stabilise(
        crop, valid, config.outlier_px, lambda a, b: float(np.linalg.norm(a - b, axis=-1).mean()))
    step = np.linalg.norm(crop[1:] - crop[:-1], axis=-1).mean(axis=-1)  # [F - 1]
    measurable = valid[1:] & valid[:-1]
    displacement[1:][measurable] = step[measurable]
    return displacement, info


def score_tracks(tracks: Tracks, labels: SpeakerLabels, fps: float, video: str = "video",
                 config: InteractivityConfig = InteractivityConfig()) -> InteractivityResult:
    """Interactivity of tracked faces against one clip's speaker intervals (people left to right)."""
    if tracks.num_people != labels.num_people:
        raise ValueError(f"{video}: {tracks.num_people} tracked faces but {labels.num_people} labelled people")
    frames, n = tracks.num_frames, tracks.num_people
    result = InteractivityResult(video, None, [], fps, frames, tracks.source)
    result.frames_with_extra_faces = int((tracks.counts > n).sum())
    duration = frames / fps
    if labels.end_s > duration + 1.5 / fps:  # labels run past the video: a truncated generation?
        result.warnings.append(f"speaker intervals end at {labels.end_s:.3f} s but the video lasts {duration:.3f} s")

    found = tracks.found()
    limit = config.max_bad_fraction * frames
    if tracks.counts.max(initial=0) < n:
        return _fail(result, "face_count_changed",
                     f"expected {n} faces, found at most {tracks.counts.max(initial=0)} in any frame")
    if result.frames_with_extra_faces > limit:
        return _fail(result, "face_count_changed",
                     f"expected {n} faces, found more in {result.frames_with_extra_faces} of {frames} frames "
                     f"(frames with 0, 1, 2, ... faces: {np.bincount(tracks.counts).tolist()})")
    for person in range(n):
        missing = int((~found[:, person]).sum())
        if missing > limit:
            return _fail(result, "lost_track",
                         f"person {person} ({labels.names[person]}) not found in {missing} of {frames} frames")

    total_motion = total_time = 0.0
    for person in range(n):
        displacement, info = person_motion(tracks.boxes[:, person], tracks.points[:, person], config)
        listening = ~labels.speaking(person, frames, fps)
        listening[0] = False  # step 0 has no previous frame
        measured = listening & np.isfinite(displacement)
        steps = int(measured.sum())
        motion = float(displacement[measured].sum()) / fps
        time = steps / fps
        score = motion / time if steps else None
        reason = None
        if not listening.any():
            reason = "speaks in every frame"
        elif not steps:
            reason = "face not found in any listening step"
        result.people.append(PersonScore(
            labels.names[person], score, time, steps, int(listening.sum()) - steps,
            int((~found[:, person]).sum()), info["replaced_landmark_sets"], info["replaced_centres"],
            info["crop_side"], reason))
        total_motion += motion
        total_time += time
    if total_time == 0:
        return _fail(result, "no_listening_frames", "no measurable step where anybody listens")
    result.score = total_motion / total_time
    return result


def _fail(result: InteractivityResult, reason: str, message: str) -> InteractivityResult:
    result.failure, result.message, result.score = reason, message, None
    return result


def score_video(video: str | os.PathLike, labels: SpeakerLabels | Mapping[str, SpeakerLabels],
                source: LandmarkSource, config: InteractivityConfig = InteractivityConfig()) -> InteractivityResult:
    """Interactivity of one video file. `labels` is the clip's SpeakerLabels or the whole file's mapping
    (matched by file name). Failures come back as a result with `failure` set, never as silence."""
    from ..video.io import read_video

    name = Path(video).name
    if not isinstance(labels, SpeakerLabels):
        try:
            labels = labels_for_video(labels, video)
        except KeyError as error:
            return InteractivityResult(name, None, [], None, 0, source.name, "no_speaker_labels", str(error.args[0]))
    try:
        data = read_video(video)
    except (OSError, ValueError) as error:  # av.FFmpegError is an OSError
        return InteractivityResult(name, None, [], None, 0, source.name, "unreadable_video", f"{video}: {error}")
    tracks = track_faces(data.frames, labels.num_people, source)
    return score_tracks(tracks, labels, data.fps, name, config)


def video_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith("."))


def score_videos(videos: Sequence[str | os.PathLike], labels: Mapping[str, SpeakerLabels], source: LandmarkSource,
                 config: InteractivityConfig = InteractivityConfig()) -> list[InteractivityResult]:
    return [score_video(video, labels, source, config) for video in videos]


def summarize(results: Sequence[InteractivityResult]) -> dict:
    """Benchmark summary: the mean of the per-video scores over scored videos, failures counted by reason.

    A failed video is not scored as 0 (that would mix tracking failures into the motion measure); it
    is counted here and listed in `failed_videos`, so a summary never hides an excluded video.
    """
    scored = [r for r in results if r.score is not None]
    failures: dict[str, int] = {}
    for r in results:
        if r.failure:
            failures[r.failure] = failures.get(r.failure, 0) + 1
    return {
        "videos": len(results),
        "scored": len(scored),
        "failed": len(results) - len(scored),
        "failures": failures,
        "failed_videos": {r.video: f"{r.failure}: {r.message}" for r in results if r.failure},
        "score": float(np.mean([r.score for r in scored])) if scored else None,
    }
