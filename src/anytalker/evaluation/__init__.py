"""Evaluation metrics of the AnyTalker paper: Interactivity, lip sync (Sync-C / Sync-D / Sync-C*),
FID, FVD and identity similarity.

Everything runs offline: landmarks come from dlib's models shipped on PyPI (or optional MediaPipe /
a local InsightFace folder / given ground truth); the metric networks (SyncNet, Inception, I3D,
ArcFace) are user-supplied files, never downloaded (`weights.WEIGHTS` says where each comes from).
Heavy modules (torch networks, onnxruntime) are imported by the submodules that need them.
"""

from .interactivity import (
    FAILURE_REASONS,
    InteractivityConfig,
    InteractivityResult,
    PersonScore,
    score_tracks,
    score_video,
    score_videos,
    summarize,
)
from .landmarks import (
    EYE_BROW_68,
    LANDMARK_BACKENDS,
    MEDIAPIPE_EYE_BROW,
    DlibLandmarks,
    FaceLandmarks,
    GivenLandmarks,
    InsightFaceLandmarks,
    LandmarkSource,
    MediaPipeLandmarks,
    get_landmark_source,
)
from .speakers import SpeakerLabelError, SpeakerLabels, labels_for_video, load_speaker_labels, parse_time
from .tracking import Tracks, track_faces
from .weights import WEIGHTS, MissingWeightsError, require_weights

__all__ = [
    "EYE_BROW_68", "FAILURE_REASONS", "LANDMARK_BACKENDS", "MEDIAPIPE_EYE_BROW", "WEIGHTS", "DlibLandmarks",
    "FaceLandmarks", "GivenLandmarks", "InsightFaceLandmarks", "InteractivityConfig", "InteractivityResult",
    "LandmarkSource", "MediaPipeLandmarks", "MissingWeightsError", "PersonScore", "SpeakerLabelError",
    "SpeakerLabels", "Tracks", "get_landmark_source", "labels_for_video", "load_speaker_labels", "parse_time",
    "require_weights", "score_tracks", "score_video", "score_videos", "summarize", "track_faces",
]
