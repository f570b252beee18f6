"""User-supplied metric weights: where each file comes from, and one error when it is missing.

No metric network ships on PyPI and nothing here downloads: the user fetches the standard file
once and passes its path. A missing file raises MissingWeightsError naming the file, where it is
usually obtained and the option that takes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WEIGHTS", "MissingWeightsError", "WeightFile", "require_weights"]


class MissingWeightsError(FileNotFoundError):
    """A metric's weight file is not where it was looked for."""


@dataclass(frozen=True)
class WeightFile:
    key: str
    filename: str  # the standard file name
    what: str
    source: str  # where users usually get it (no download is attempted)
    option: str  # the CLI option that takes its path


WEIGHTS = {
    "syncnet": WeightFile(
        "syncnet", "syncnet_v2.model", "SyncNet (syncnet_v2) lip-sync network",
        "the syncnet_python repository (joonson/syncnet_python), whose download_model.sh fetches data/syncnet_v2.model",
        "--syncnet"),
    "inception": WeightFile(
        "inception", "pt_inception-2015-12-05-6726825d.pth", "FID Inception-v3 (pytorch-fid)",
        "the pytorch-fid project's GitHub release 'fid_weights' (pytorch-fid downloads it to the torch hub cache "
        "on first use: ~/.cache/torch/hub/checkpoints/)",
        "--inception"),
    "i3d": WeightFile(
        "i3d", "i3d_torchscript.pt", "FVD I3D (Kinetics-400) TorchScript network",
        "the StyleGAN-V / DIGAN FVD code, which downloads i3d_torchscript.pt (a TorchScript export of the "
        "Kinetics-400 I3D used by the original TensorFlow FVD)",
        "--i3d"),
    "arcface": WeightFile(
        "arcface", "w600k_r50.onnx", "ArcFace face-recognition network (ONNX)",
        "an InsightFace model pack such as buffalo_l (w600k_r50.onnx) or antelopev2 (glintr100.onnx), "
        "usually under ~/.insightface/models/",
        "--arcface"),
}


def require_weights(key: str, path: str | os.PathLike | None) -> Path:
    """The path of an existing weight file, or MissingWeightsError telling the user how to supply it."""
    spec = WEIGHTS[key]
    if path is None:
        raise MissingWeightsError(
            f"{spec.what}: no weight file given. Pass {spec.option} PATH/{spec.filename}; "
            f"the file is not downloaded automatically: get it from {spec.source}.")
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / spec.filename
    if not path.is_file():
        raise MissingWeightsError(
            f"{spec.what}: weight file not found: {path} (expected {spec.filename}). "
            f"Get it from {spec.source} and pass its path with {spec.option}; nothing is downloaded.")
    return path
