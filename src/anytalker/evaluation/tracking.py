"""Following N people through a video: per-frame faces from a LandmarkSource -> one track per person.

Rule: the first frame with at least N faces starts the tracks with its N largest faces, ordered
left to right (audio track / label i belongs to face i, as in generation). In every later frame the
faces are matched to the people by the Hungarian method on the distance between box centres and
each person's last known centre; a match farther than `max_jump` times that person's last box side
is refused, so a person the detector misses is marked missing instead of taking someone else's face.
Nothing is interpolated: missing entries stay NaN and the metrics decide (and report) what to do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from .landmarks import FaceLandmarks, LandmarkSource

__all__ = ["Tracks", "track_faces"]


@dataclass
class Tracks:
    """Per-frame, per-person boxes and landmarks; NaN where the person was not found."""

    boxes: np.ndarray  # float [F, N, 4] (x0, y0, x1, y1) pixels
    points: np.ndarray  # float [F, N, P, 2] the source's eye/brow points
    keypoints5: np.ndarray  # float [F, N, 5, 2]; NaN where the source gives none
    counts: np.ndarray  # int [F] faces the source found in each frame (before matching)
    source: str

    @property
    def num_frames(self) -> int:
        return self.boxes.shape[0]

    @property
    def num_people(self) -> int:
        return self.boxes.shape[1]

    def found(self) -> np.ndarray:
        """bool [F, N]: the person was matched to a face in that frame."""
        return np.isfinite(self.boxes).all(axis=-1)


def track_faces(frames: Iterable[np.ndarray], num_people: int, source: LandmarkSource,
                max_jump: float = 0.5) -> Tracks:
    """Run `source` on every frame and follow `num_people` faces (see the module doc for the rule)."""
    if num_people < 1:
        raise ValueError(f"need at least one person to track, got {num_people}")
    reset = getattr(source, "reset", None)
    if callable(reset):
        reset()
    rows_boxes, counts = [], []
    last_centre = last_side = None
    num_points = None
    for index, frame in enumerate(frames):
        faces: list[FaceLandmarks] = source.detect(frame, index, expected_faces=num_people)
        counts.append(len(faces))
        if faces and num_points is None:
            num_points = faces[0].points.shape[0]
        assigned: list[FaceLandmarks | None] = [None] * num_people
        if last_centre is None:
            if len(faces) >= num_people:
                largest = sorted(faces, key=lambda face: face.box.area, reverse=True)[:num_people]
                assigned = sorted(largest, key=lambda face: face.box.center[0])
        elif faces:
            centres = np.array([face.box.center for face in faces])  # [M, 2]
            cost = np.linalg.norm(last_centre[:, None] - centres[None], axis=-1)  # [N, M]
            for person, face in zip(*linear_sum_assignment(cost), strict=True):
                if cost[person, face] <= max_jump * last_side[person]:
                    assigned[person] = faces[face]
        if last_centre is None and assigned[0] is not None:  # the tracks start in this frame
            last_centre, last_side = np.zeros((num_people, 2)), np.zeros(num_people)
        if last_centre is not None:
            for person, face in enumerate(assigned):
                if face is not None:
                    last_centre[person] = face.box.center
                    last_side[person] = max(face.box.width, face.box.height)
        rows_boxes.append(assigned)
    if not counts:
        raise ValueError("the video has no frames")
    num_points = num_points or 1
    frames_n = len(rows_boxes)
    boxes = np.full((frames_n, num_people, 4), np.nan)
    points = np.full((frames_n, num_people, num_points, 2), np.nan)
    keypoints = np.full((frames_n, num_people, 5, 2), np.nan)
    for t, assigned in enumerate(rows_boxes):
        for person, face in enumerate(assigned):
            if face is None:
                continue
            if face.points.shape[0] != num_points:
                raise ValueError(f"{source.name} gave {face.points.shape[0]} points in frame {t}, "
                                 f"{num_points} before: a source must give a fixed point set")
            boxes[t, person] = face.box.as_tuple()
            points[t, person] = face.points
            if face.keypoints5 is not None:
                keypoints[t, person] = face.keypoints5
    return Tracks(boxes, points, keypoints, np.asarray(counts), source.name)
