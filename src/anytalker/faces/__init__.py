"""Faces: detector backends, user boxes, N faces for N tracks, and the release's face masks."""

from ..utils.lazy import lazy_exports

# Names are imported on first use: `masks` imports torch, which the CLI's parsing should not pay for.
_EXPORTS = {
    "detection": (
        "DEFAULT_DETECTORS", "Detection", "DetectorAttempt", "DetectorUnavailable", "DlibCnnDetector",
        "DlibHogDetector", "FaceBox", "FaceCountError", "FaceDetector", "InsightFaceDetector",
        "MediaPipeDetector", "ORDERS", "OpenCVHaarDetector", "detect_faces", "detect_faces_in_region",
        "face_recognition_models_dir", "get_detector", "load_image", "parse_bbox", "require_module",
        "select_faces", "square_box"
    ),
    "masks": (
        "box_mask", "build_face_masks", "expand_mask", "expand_mask_box", "mask_channels", "token_mask"
    ),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
