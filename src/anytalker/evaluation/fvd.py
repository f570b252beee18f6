"""FVD: Fréchet distance between I3D (Kinetics-400) features of real and generated clips.

The network is the standard TorchScript export `i3d_torchscript.pt` (used by StyleGAN-V, DIGAN and
most PyTorch FVD code; it reproduces the original TensorFlow FVD features). It is called as
`i3d(videos, rescale=False, resize=False, return_features=True)` on float [B, 3, T, 224, 224]
in [-1, 1] and returns the 400-d logits before the softmax, the features FVD uses.

Clip preparation (documented because FVD numbers depend on it):
- frames: `num_frames` = 16 consecutive frames per clip (the usual FVD-16); a video gives
  floor(frames / 16) non-overlapping clips by default, or only its first clip (`clips="first"`);
  a video shorter than 16 frames is an error, not padded;
- resize: the shorter side to 224 (bilinear, align_corners=False, on each frame), then a 224 x 224
  centre crop; values [0, 255] -> [-1, 1].
The statistics and distance are fid.feature_statistics / fid.frechet_distance. With fewer clips
than feature dimensions (400) the covariances are rank-deficient: the distance is still defined but
noisy; compare methods on the same clip counts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FVD_FRAMES", "load_i3d", "preprocess_clip", "video_clips", "i3d_features"]

FVD_FRAMES = 16
FVD_SIZE = 224


def load_i3d(path: str | os.PathLike | None, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The I3D TorchScript module from i3d_torchscript.pt, in eval mode. Loading runs no Python pickle."""
    from .weights import require_weights

    path = require_weights("i3d", path)
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        raise ValueError(f"{path} is not a TorchScript file (expected i3d_torchscript.pt): {error}") from None
    return model.eval().to(device)


def preprocess_clip(frames: np.ndarray, size: int = FVD_SIZE) -> torch.Tensor:
    """uint8 RGB [T, H, W, 3] -> float [3, T, size, size] in [-1, 1]: shorter side to `size`, centre crop."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB frames [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255  # [T, 3, H, W]
    height, width = video.shape[-2:]
    scale = size / min(height, width)
    target = (size, math.ceil(width * scale)) if height <= width else (math.ceil(height * scale), size)
    video = F.interpolate(video, size=target, mode="bilinear", align_corners=False)
    top, left = (video.shape[-2] - size) // 2, (video.shape[-1] - size) // 2
    video = video[:, :, top:top + size, left:left + size]
    return ((video - 0.5) * 2).permute(1, 0, 2, 3).contiguous()  # [3, T, size, size]


def video_clips(frames: np.ndarray, num_frames: int = FVD_FRAMES, clips: str = "all") -> list[np.ndarray]:
    """Non-overlapping clips of `num_frames` frames ("all") or the first one ("first")."""
    if clips not in ("all", "first"):
        raise ValueError(f"clips must be 'all' or 'first', got {clips!r}")
    if len(frames) < num_frames:
        raise ValueError(f"video has {len(frames)} frames, FVD clips need {num_frames}")
    count = 1 if clips == "first" else len(frames) // num_frames
    return [frames[i * num_frames:(i + 1) * num_frames] for i in range(count)]


@torch.inference_mode()
def i3d_features(model, clips: Iterable[np.ndarray], batch_size: int = 8,
                 device: str | torch.device = "cpu") -> np.ndarray:
    """float64 [N, 400] I3D features of uint8 RGB clips [T, H, W, 3]."""
    feats, batch = [], []

    def flush():
        videos = torch.stack(batch).to(device)
        out = model(videos, rescale=False, resize=False, return_features=True)
        feats.append(out.double().cpu().numpy().reshape(len(batch), -1))
        batch.clear()

    for clip in clips:
        batch.append(preprocess_clip(clip))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not feats:
        raise ValueError("no clips to compute FVD features of")
    return np.concatenate(feats)
