"""Frame bookkeeping of generation: frame counts from audio, resolution buckets, long-video windows.

Pure functions; the Wan VAE's 4x temporal stride makes every generated clip 4n+1 frames long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .settings import SPATIAL_MULTIPLE, TEMPORAL_STRIDE, check_window


def frames_for_duration(duration_s: float, fps: int) -> int:
    """Video frames that cover `duration_s` at `fps` (the output's frame count)."""
    if duration_s <= 0:
        raise ValueError(f"audio duration must be positive, got {duration_s}")
    return max(1, math.ceil(duration_s * fps - 1e-9))


def latent_aligned(frames: int, stride: int = TEMPORAL_STRIDE) -> int:
    """Smallest 4n+1 >= frames: what the model generates before the video is cut to length.

    The release rounds down instead (losing up to 3 frames of audio at the end).
    """
    return ((max(frames, 1) - 1 + stride - 1) // stride) * stride + 1


def choose_resolution(image_height: int, image_width: int, area: int = 480 * 832,
                      multiple: int = SPATIAL_MULTIPLE) -> tuple[int, int]:
    """(height, width): the image's aspect ratio at about `area` pixels, both multiples of 16."""
    if image_height < multiple or image_width < multiple:
        raise ValueError(f"image is {image_width}x{image_height}; at least {multiple}x{multiple} pixels are needed")
    scale = math.sqrt(area / (image_height * image_width))
    height = max(multiple, round(image_height * scale / multiple) * multiple)
    width = max(multiple, round(image_width * scale / multiple) * multiple)
    return height, width


@dataclass(frozen=True)
class Window:
    """Video frames [start, start + length) of one generation window; its first `carried` frames
    are the previous window's last frames (motion context), regenerated and then dropped."""

    start: int
    length: int
    carried: int


def plan_windows(total_frames: int, max_frames: int = 81, motion_frames: int = 5,
                 stride: int = TEMPORAL_STRIDE) -> list[Window]:
    """Windows of 4n+1 frames covering `total_frames` (itself 4n+1), overlapping by `motion_frames`
    (the window lengths are checked by `settings.check_window`)."""
    if total_frames < 1 or (total_frames - 1) % stride:
        raise ValueError(f"total_frames must be {stride}n+1, got {total_frames}")
    check_window(max_frames, motion_frames)
    if total_frames <= max_frames:
        return [Window(0, total_frames, 0)]
    windows = [Window(0, max_frames, 0)]
    while windows[-1].start + windows[-1].length < total_frames:
        start = windows[-1].start + windows[-1].length - motion_frames
        # 4n+1 frames from `start`: the last window is shortened to what is left.
        windows.append(Window(start, min(max_frames, total_frames - start), motion_frames))
    return windows
