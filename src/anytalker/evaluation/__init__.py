"""Evaluation metrics of the AnyTalker paper: Interactivity, lip sync (Sync-C / Sync-D / Sync-C*),
FID, FVD and identity similarity.

Everything runs offline: landmarks come from dlib's models shipped on PyPI (or optional MediaPipe /
a local InsightFace folder / given ground truth); the metric networks (SyncNet, Inception, I3D,
ArcFace) are user-supplied files, never downloaded (`weights.WEIGHTS` says where each comes from).
Heavy modules (torch networks, onnxruntime) are imported by the submodules that need them.
"""

from ..utils.lazy import lazy_exports

_EXPORTS = {
    "interactivity": (
        "FAILURE_REASONS", "InteractivityConfig", "InteractivityResult", "PersonScore", "score_tracks",
        "score_video", "score_videos", "summarize"
    ),
    "landmarks": (
        "EYE_BROW_68", "LANDMARK_BACKENDS", "MEDIAPIPE_EYE_BROW", "DlibLandmarks", "FaceLandmarks",
        "GivenLandmarks", "InsightFaceLandmarks", "LandmarkSource", "MediaPipeLandmarks",
        "get_landmark_source"
    ),
    "speakers": (
        "SpeakerLabelError", "SpeakerLabels", "labels_for_video", "load_speaker_labels", "parse_time"
    ),
    "tracking": (
        "Tracks", "track_faces"
    ),
    "weights": (
        "WEIGHTS", "MissingWeightsError", "require_weights"
    ),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
