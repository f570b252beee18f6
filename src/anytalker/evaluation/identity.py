"""Identity preservation: cosine similarity of face embeddings across a generated video.

As in the paper: per person, the embedding of the face in the first frame against the embedding in
every later frame (mean cosine similarity); also each frame against the person's face in the
reference image, when one is given. The video score is the mean over people.

Embedders:
- `ArcFaceONNX(path)`: an InsightFace ArcFace ONNX model supplied by the user (e.g. buffalo_l's
  w600k_r50.onnx), run with onnxruntime. Faces are aligned as InsightFace's `norm_crop`: a least-
  squares similarity transform (Umeyama) of five keypoints (eye centres, nose tip, mouth corners,
  from the 68-point landmarks) onto the standard 112 x 112 ArcFace template; input RGB,
  (x - 127.5) / 127.5 (`input_mean`, `input_std`: pass 0 and 1 for older models whose graph
  normalises itself). This is the paper's kind of metric.
- `DlibFaceEmbedder()`: dlib's 128-d ResNet face descriptor shipped in face-recognition-models
  (offline, no user file). Not ArcFace: its numbers are not comparable with ArcFace similarities.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

from ..faces.detection import FaceBox, require_module, face_recognition_models_dir
from .tracking import Tracks

__all__ = ["ARCFACE_TEMPLATE", "FaceEmbedder", "ArcFaceONNX", "DlibFaceEmbedder", "similarity_transform",
           "align_face", "PersonIdentity", "identity_scores"]

# InsightFace's arcface_dst: 5 keypoints of an aligned 112 x 112 face.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]])


class FaceEmbedder(Protocol):
    name: str

    def embed(self, frame: np.ndarray, box: FaceBox, keypoints5: np.ndarray | None) -> np.ndarray:
        """A unit-length embedding of the face in an RGB uint8 frame."""


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2 x 3 matrix of the least-squares similarity (rotation, uniform scale, shift) src -> dst (Umeyama 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    u, s, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection is not a similarity: flip the weakest axis
        d[-1] = -1
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / (src_c ** 2).sum(axis=1).mean()
    shift = mu_dst - scale * rotation @ mu_src
    return np.hstack([scale * rotation, shift[:, None]])


def align_face(frame: np.ndarray, keypoints5: np.ndarray, size: int = 112) -> np.ndarray:
    """The ArcFace-aligned face: uint8 RGB [size, size, 3]."""
    import cv2

    matrix = similarity_transform(keypoints5, ARCFACE_TEMPLATE * (size / 112.0))
    return cv2.warpAffine(frame, matrix, (size, size), borderValue=0.0)


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64).ravel()
    norm = np.linalg.norm(vector)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("face embedding is zero or not finite")
    return vector / norm


class ArcFaceONNX:
    """An ArcFace ONNX model (InsightFace) through onnxruntime on the CPU."""

    name = "arcface"

    def __init__(self, path: str | os.PathLike | None, input_mean: float = 127.5, input_std: float = 127.5):
        from .weights import require_weights

        path = require_weights("arcface", path)
        ort = require_module("onnxruntime", "onnxruntime")
        self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        first = self._session.get_inputs()[0]
        self._input = first.name
        shape = first.shape  # [batch, 3, 112, 112]; the batch may be symbolic
        if len(shape) != 4 or shape[1] != 3 or not all(isinstance(v, int) for v in shape[2:]):
            raise ValueError(f"{path}: expected an NCHW image input, got {shape}")
        self.size = int(shape[2])
        self.input_mean, self.input_std = input_mean, input_std

    def embed(self, frame: np.ndarray, box: FaceBox, keypoints5: np.ndarray | None) -> np.ndarray:
        if keypoints5 is None or not np.isfinite(keypoints5).all():
            raise ValueError("ArcFace needs five face keypoints to align the face "
                             "(use a landmark backend that gives them)")
        face = align_face(frame, keypoints5, self.size).astype(np.float32)
        blob = ((face - self.input_mean) / self.input_std).transpose(2, 0, 1)[None]  # [1, 3, 112, 112] RGB
        return _unit(self._session.run(None, {self._input: blob})[0])


class DlibFaceEmbedder:
    """dlib's ResNet face descriptor (face-recognition-models), fit on dlib's 68-point landmarks in the box."""

    name = "dlib-resnet"

    def __init__(self):
        from .landmarks import _dlib_shape_predictor

        self._dlib = require_module("dlib", "dlib-bin")
        self._predictor = _dlib_shape_predictor(None)
        self._model = self._dlib.face_recognition_model_v1(
            str(face_recognition_models_dir() / "dlib_face_recognition_resnet_model_v1.dat"))

    def embed(self, frame: np.ndarray, box: FaceBox, keypoints5: np.ndarray | None = None) -> np.ndarray:
        # dlib rectangles have inclusive ends
        rect = self._dlib.rectangle(round(box.x0), round(box.y0), round(box.x1) - 1, round(box.y1) - 1)
        shape = self._predictor(frame, rect)
        return _unit(np.array(self._model.compute_face_descriptor(np.ascontiguousarray(frame), shape)))


@dataclass
class PersonIdentity:
    first_frame: int | None  # the frame the person's reference embedding comes from
    vs_first: float | None  # mean cosine similarity, first frame vs every later sampled frame
    vs_reference: float | None  # mean cosine similarity, reference image face vs every sampled frame
    frames: int  # sampled frames where the face was found (first included)
    missing: int  # sampled frames where it was not


def identity_scores(frames: np.ndarray, tracks: Tracks, embedder: FaceEmbedder, reference_faces=None,
                    stride: int = 1) -> dict:
    """Identity similarity per person and averaged; `reference_faces`: per person (image, box, keypoints5) or None.

    Every `stride`-th frame is embedded; frames where a person was not found are counted as missing.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    people = []
    found = tracks.found()
    for person in range(tracks.num_people):
        sampled = np.arange(0, tracks.num_frames, stride)
        present = [int(t) for t in sampled if found[t, person]]
        if not present:
            people.append(PersonIdentity(None, None, None, 0, len(sampled)))
            continue
        embeddings = np.stack([embedder.embed(frames[t], FaceBox(*tracks.boxes[t, person]),
                                              tracks.keypoints5[t, person]) for t in present])
        vs_first = float((embeddings[1:] @ embeddings[0]).mean()) if len(present) > 1 else None
        vs_reference = None
        if reference_faces is not None:
            image, box, keypoints = reference_faces[person]
            vs_reference = float((embeddings @ embedder.embed(image, box, keypoints)).mean())
        people.append(PersonIdentity(present[0], vs_first, vs_reference, len(present), len(sampled) - len(present)))

    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    return {"embedder": embedder.name, "vs_first": mean(p.vs_first for p in people),
            "vs_reference": mean(p.vs_reference for p in people), "people": [asdict(p) for p in people]}
