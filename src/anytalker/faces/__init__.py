"""Faces: detector backends, user boxes, N faces for N tracks, and the release's face masks."""

from .detection import (
    DEFAULT_DETECTORS,
    Detection,
    DetectorAttempt,
    DetectorUnavailable,
    DlibCnnDetector,
    DlibHogDetector,
    FaceBox,
    FaceCountError,
    FaceDetector,
    InsightFaceDetector,
    MediaPipeDetector,
    OpenCVHaarDetector,
    detect_faces,
    face_recognition_models_dir,
    get_detector,
    load_image,
    parse_bbox,
    select_faces,
    square_box,
)
from .masks import box_mask, build_face_masks, expand_mask, expand_mask_box, mask_channels, token_mask

__all__ = [
    "DEFAULT_DETECTORS", "Detection", "DetectorAttempt", "DetectorUnavailable", "DlibCnnDetector",
    "DlibHogDetector", "FaceBox", "FaceCountError", "FaceDetector", "InsightFaceDetector",
    "MediaPipeDetector", "OpenCVHaarDetector", "box_mask", "build_face_masks", "detect_faces",
    "expand_mask", "expand_mask_box", "face_recognition_models_dir", "get_detector", "load_image",
    "mask_channels", "parse_bbox", "select_faces", "square_box", "token_mask",
]
