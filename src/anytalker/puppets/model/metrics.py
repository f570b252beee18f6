"""What a video of a puppet scene is scored on, all read from its pixels with the scene's face boxes.

- lip sync: correlation of each puppet's mouth opening, read from the generated pixels with the
  scene's face boxes (puppets.measure), with its own track's loudness envelope (aligned by the
  renderer's MOUTH_LAG_FRAMES), and with the other puppets' envelopes;
- binding: over one-speaker moments (runs of frames where exactly one puppet speaks, cut into
  pieces of at most half a second), the share where the speaker's mouth moves most (sum of
  |frame-to-frame change| of the measured opening);
- Interactivity: the release's metric (evaluation.interactivity) on the eye/brow landmarks
  measured from the pixels: mean eye/brow motion per frame while a puppet does not speak.

Undefined values (a mouth that never moves, no other puppet) are None in the returned dicts, so
they go to JSON as they are.
"""

from __future__ import annotations


import numpy as np

from ...utils.records import jsonable
from ..measure import correlation


def finite_mean(values) -> float:
    """Mean of the finite values (None and NaN skipped); NaN when there are none."""
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


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


def scene_metrics(frames: np.ndarray, scene) -> dict:
    """Lip sync, binding and Interactivity of a video of `scene` (generated, or scene.frames for the
    ground-truth render), all read from its pixels with the scene's face boxes."""
    from ...evaluation.interactivity import score_tracks
    from ...evaluation.speakers import SpeakerLabels
    from ...evaluation.tracking import Tracks
    from ..behaviour import MOUTH_LAG_FRAMES
    from ..measure import measure_frames

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
    return jsonable({
        "seed": scene.seed, "persons": n, "frames": count,
        "lip_own": own, "lip_other": other,
        "binding_moments": moments, "binding_wins": wins,
        "binding": wins / moments if moments else None,
        "interactivity": interactivity.score,
        "interactivity_people": [p.score for p in interactivity.people],
        "interactivity_failure": interactivity.failure,
        "landmarks_missing": float(np.isnan(measured.landmarks).any(axis=(2, 3)).mean()),
    })


def summarize_metrics(per_scene: list[dict]) -> dict:
    """Means over puppets and scenes (lip sync, Interactivity), binding pooled over moments."""
    moments = sum(s["binding_moments"] for s in per_scene)
    return jsonable({
        "scenes": len(per_scene),
        "lip_own": finite_mean([v for s in per_scene for v in s["lip_own"]]),
        "lip_other": finite_mean([v for s in per_scene for v in s["lip_other"]]),
        "binding": sum(s["binding_wins"] for s in per_scene) / moments if moments else None,
        "binding_moments": moments,
        "interactivity": finite_mean([s["interactivity"] for s in per_scene]),
        "interactivity_failed": sum(s["interactivity"] is None for s in per_scene),
        "landmarks_missing": finite_mean([s["landmarks_missing"] for s in per_scene]),
    })
