"""What a video of a puppet scene is scored on, all read from its pixels with the scene's face boxes.

- lip sync: correlation of each puppet's mouth opening, read from the generated pixels with the
  scene's face boxes (puppets.measure), with its own track's loudness envelope (aligned by the
  renderer's MOUTH_LAG_FRAMES), and with the other puppets' envelopes;
- binding: over one-speaker moments (runs of frames where exactly one puppet speaks, cut into
  pieces of at most half a second), the share where the speaker's mouth moves most (sum of
  |frame-to-frame change| of the measured opening);
- Interactivity: the release's metric (evaluation.interactivity) on the eye/brow landmarks
  measured from the pixels: mean eye/brow motion per frame while a puppet does not speak;
- mouth-opening amplitude: the spread (std over frames) and the maximum of each puppet's measured
  mouth opening, divided by those measured the same way on the ground-truth render (1.0 = as wide
  as the voices say; lip sync is a correlation and does not see a mouth that opens half as wide);
- background flicker: mean absolute difference of consecutive frames (0-255 levels, RGB channels
  averaged) over the pixels outside the face boxes, and its ratio to the ground-truth render's.

Undefined values (a mouth that never moves, no other puppet) are None in the returned dicts, so
they go to JSON as they are.
"""

from __future__ import annotations

import math

import numpy as np

from ...utils.records import jsonable
from ..measure import correlation


def finite_mean(values) -> float:
    """Mean of the finite values (None and NaN skipped); NaN when there are none."""
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def ratio(value, truth) -> float | None:
    """value / truth, None when either is undefined or truth is not positive."""
    if value is None or truth is None or not np.isfinite(value) or not np.isfinite(truth) or truth <= 0:
        return None
    return float(value / truth)


def mouth_amplitude(mouth: np.ndarray) -> tuple[list, list]:
    """Per puppet (std over frames, max) of measured mouth heights [N, F]; NaN frames skipped."""
    stds, maxima = [], []
    for row in np.asarray(mouth, np.float64):
        row = row[np.isfinite(row)]
        stds.append(float(row.std()) if row.size else None)
        maxima.append(float(row.max()) if row.size else None)
    return stds, maxima


def background_mask(shape: tuple[int, int], face_boxes) -> np.ndarray:
    """bool [H, W]: True outside every face box (box edges rounded outwards)."""
    mask = np.ones(shape, bool)
    for box in face_boxes:
        x0, y0, x1, y1 = box.as_tuple()
        mask[max(0, math.floor(y0)):max(0, math.ceil(y1)), max(0, math.floor(x0)):max(0, math.ceil(x1))] = False
    return mask


def background_flicker(frames: np.ndarray, face_boxes) -> float | None:
    """Mean |frame t+1 - frame t| (0-255 levels, RGB averaged) outside the face boxes; None for one frame."""
    frames = np.asarray(frames)
    mask = background_mask(frames.shape[1:3], face_boxes)
    if frames.shape[0] < 2 or not mask.any():
        return None
    total = 0.0
    for t in range(frames.shape[0] - 1):  # frame by frame: no [F, H, W, 3] float copy of a long video
        total += float(np.abs(frames[t + 1][mask].astype(np.int16) - frames[t][mask].astype(np.int16)).mean())
    return total / (frames.shape[0] - 1)


def one_speaker_moments(speaking: np.ndarray, min_frames: int = 4, max_frames: int = 12) -> list[tuple[int, int, int]]:
    """(speaker, start, stop) pieces of the runs where exactly one puppet speaks."""
    single = speaking.sum(axis=0) == 1
    who = np.where(single, speaking.argmax(axis=0), -1)
    moments, t = [], 0
    frames = speaking.shape[1]
    while t < frames:
        if who[t] < 0:
            t += 1
            continue
        end = t
        while end < frames and who[end] == who[t]:
            end += 1
        for start in range(t, end, max_frames):
            stop = min(start + max_frames, end)
            if stop - start >= min_frames:
                moments.append((int(who[t]), start, stop))
        t = end
    return moments


def scene_metrics(frames: np.ndarray, scene, truth=None) -> dict:
    """Lip sync, binding, Interactivity, mouth amplitude and flicker of a video of `scene`
    (generated, or scene.frames for the ground-truth render), all read from its pixels with the
    scene's face boxes. `truth`: measure_frames of scene.frames when already made (it is the
    denominator of the amplitude ratios; measured here otherwise)."""
    from ...evaluation.interactivity import score_tracks
    from ...evaluation.speakers import SpeakerLabels
    from ...evaluation.tracking import Tracks
    from ..behaviour import MOUTH_LAG_FRAMES
    from ..measure import measure_frames

    is_truth = frames is scene.frames
    frames = np.asarray(frames)[: scene.num_frames]
    n, count = scene.persons, frames.shape[0]
    measured = measure_frames(frames, scene.face_boxes)
    mouth = measured.mouth_height  # [N, F]
    lag = MOUTH_LAG_FRAMES
    envelope = np.asarray(scene.ground_truth["envelope"], np.float64)[:, :count]
    own = [correlation(mouth[i, lag:], envelope[i, :count - lag]) for i in range(n)]
    other = [finite_mean([correlation(mouth[i, lag:], envelope[j, :count - lag]) for j in range(n) if j != i])
             for i in range(n)]

    speaking = np.asarray(scene.ground_truth["speaking"], bool)[:, :count]
    wins = moments = 0
    if n > 1:
        motion = np.abs(np.diff(mouth, axis=1))  # [N, F-1]: change from frame t to t+1
        for speaker, start, stop in one_speaker_moments(speaking):
            a, b = min(start + lag, count - 1), min(stop + lag, count - 1)  # the mouth trails the voice
            if b <= a:
                continue
            moved = np.nan_to_num(motion[:, a:b].sum(axis=1), nan=-1.0)
            moments += 1
            wins += int(np.argmax(moved) == speaker and moved[speaker] > np.delete(moved, speaker).max())

    points = np.transpose(measured.landmarks, (1, 0, 2, 3))  # [F, N, 22, 2]
    boxes = np.repeat(np.array([b.as_tuple() for b in scene.face_boxes], np.float64)[None], count, axis=0)
    boxes[~np.isfinite(points).all(axis=(2, 3))] = np.nan
    tracks = Tracks(boxes=boxes, points=points, keypoints5=np.full((count, n, 5, 2), np.nan),
                    counts=np.isfinite(boxes).all(axis=2).sum(axis=1), source="puppets-measure")
    labels = SpeakerLabels(tuple(f"puppet{i}" for i in range(n)),
                           tuple(tuple(map(tuple, person)) for person in scene.speaking_intervals))
    interactivity = score_tracks(tracks, labels, scene.fps, video=f"scene{scene.seed}")

    if truth is None:
        truth = measured if is_truth else measure_frames(scene.frames[:count], scene.face_boxes)
    mouth_std, mouth_max = mouth_amplitude(mouth)
    truth_std, truth_max = mouth_amplitude(truth.mouth_height[:, :count])
    flicker = background_flicker(frames, scene.face_boxes)
    flicker_truth = flicker if is_truth else background_flicker(scene.frames[:count], scene.face_boxes)
    return jsonable({
        "seed": scene.seed, "persons": n, "frames": count,
        "lip_own": own, "lip_other": other,
        "binding_moments": moments, "binding_wins": wins,
        "binding": wins / moments if moments else None,
        "interactivity": interactivity.score,
        "interactivity_people": [p.score for p in interactivity.people],
        "interactivity_failure": interactivity.failure,
        "landmarks_missing": float(np.isnan(measured.landmarks).any(axis=(2, 3)).mean()),
        "mouth_std": mouth_std, "mouth_max": mouth_max, "mouth_std_truth": truth_std, "mouth_max_truth": truth_max,
        "amplitude_std_ratio": [ratio(a, b) for a, b in zip(mouth_std, truth_std)],
        "amplitude_max_ratio": [ratio(a, b) for a, b in zip(mouth_max, truth_max)],
        "flicker": flicker, "flicker_truth": flicker_truth, "flicker_ratio": ratio(flicker, flicker_truth),
    })


def summarize_metrics(per_scene: list[dict]) -> dict:
    """Means over puppets and scenes (lip sync, Interactivity, amplitude ratios), binding pooled over
    moments, flicker: mean over scenes and flicker_ratio = that mean / the ground truth's mean.
    Per-scene dicts without the amplitude / flicker keys (older results) give None for those."""
    moments = sum(s["binding_moments"] for s in per_scene)
    flicker = finite_mean([s.get("flicker") for s in per_scene])
    flicker_truth = finite_mean([s.get("flicker_truth") for s in per_scene])
    return jsonable({
        "scenes": len(per_scene),
        "lip_own": finite_mean([v for s in per_scene for v in s["lip_own"]]),
        "lip_other": finite_mean([v for s in per_scene for v in s["lip_other"]]),
        "binding": sum(s["binding_wins"] for s in per_scene) / moments if moments else None,
        "binding_moments": moments,
        "interactivity": finite_mean([s["interactivity"] for s in per_scene]),
        "interactivity_failed": sum(s["interactivity"] is None for s in per_scene),
        "landmarks_missing": finite_mean([s["landmarks_missing"] for s in per_scene]),
        "amplitude_std_ratio": finite_mean([v for s in per_scene for v in s.get("amplitude_std_ratio", [])]),
        "amplitude_max_ratio": finite_mean([v for s in per_scene for v in s.get("amplitude_max_ratio", [])]),
        "flicker": flicker, "flicker_truth": flicker_truth, "flicker_ratio": ratio(flicker, flicker_truth),
    })
