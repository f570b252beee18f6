"""Lip sync: Sync-C / Sync-D (SyncNet confidence and distance) and the paper's per-speaker Sync-C*.

The standard evaluation (syncnet_python's `SyncNetInstance.evaluate`), reproduced step by step:
- video at 25 fps (other rates are resampled by picking, for output frame k at t = k / 25, the
  input frame nearest to t, as FFmpeg's fps filter does); a face crop per frame (`syncnet_crop`:
  syncnet_python's crop, 0.4 padding, median-smoothed boxes, 224 x 224, BGR);
- audio: 16 kHz mono as int16-scale samples (SyncNet reads WAVs with scipy, unnormalised), 13 MFCCs
  at 100 Hz (`mfcc`, python_speech_features' defaults);
- window i = video frames i..i+4 and MFCC steps 4i..4i+19, for i < min(frames, samples // 640) - 5;
- for every window, the distance of its lip embedding to the audio embeddings of the windows
  i-15..i+15 (zero vectors past the ends); averaging over windows gives a curve over the 31 offsets:
      Sync-D = min of the curve, Sync-C = median of the curve - min, offset = 15 - argmin.
  A positive offset means the audio leads the video by that many frames.

Sync-C* (AnyTalker): for each speaker, the same confidence computed only over the windows that lie
inside one of their speaking intervals (all five frames inside), each face against its own audio
track; the intervals' confidences are averaged weighted by interval length, per speaker and over
all speakers. Intervals too short for one window are listed in `skipped`, not silently dropped.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..audio.io import SAMPLE_RATE  # SyncNet's MFCCs are taken at 16 kHz too

__all__ = ["SYNCNET_FPS", "mfcc", "resample_indices", "syncnet_crop", "smooth_boxes", "window_count",
           "syncnet_embeddings", "offset_distances", "sync_scores", "interval_windows", "SyncScore",
           "SpeakerSync", "sync_c_star"]

SYNCNET_FPS = 25
VSHIFT = 15  # offsets searched: -15..+15 frames
_SAMPLES_PER_FRAME = SAMPLE_RATE // SYNCNET_FPS  # 640
_INT16_SCALE = 32768.0


# --- audio features -----------------------------------------------------------------------------

def _round_half_up(value: float) -> int:
    return int(decimal.Decimal(value).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


def _mel_filterbank(nfilt: int, nfft: int, sample_rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    """python_speech_features' triangular filters on FFT bins floor((nfft + 1) * hz / rate)."""
    def hz2mel(hz):
        return 2595 * np.log10(1 + hz / 700.0)

    def mel2hz(mel):
        return 700 * (10 ** (mel / 2595.0) - 1)

    mel_points = np.linspace(hz2mel(low_hz), hz2mel(high_hz), nfilt + 2)
    bins = np.floor((nfft + 1) * mel2hz(mel_points) / sample_rate)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        for i in range(int(bins[j]), int(bins[j + 1])):
            bank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(int(bins[j + 1]), int(bins[j + 2])):
            bank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return bank


def mfcc(signal: np.ndarray, sample_rate: int = SAMPLE_RATE, winlen: float = 0.025, winstep: float = 0.01,
         numcep: int = 13, nfilt: int = 26, nfft: int = 512, preemph: float = 0.97, ceplifter: int = 22) -> np.ndarray:
    """MFCCs float64 [frames, numcep], numerically python_speech_features.mfcc with its defaults
    (rectangular 25 ms windows every 10 ms, the last one zero-padded; pre-emphasis 0.97; 26 mel
    filters over 0..rate/2; log; orthonormal DCT-II; lifter 22; coefficient 0 replaced by the log
    frame energy). frames = 1 + ceil((n - 400) / 160) for n > 400 samples at 16 kHz.
    """
    from scipy.fft import dct

    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 1 or signal.size == 0:
        raise ValueError(f"mfcc needs a non-empty 1-D signal, got shape {list(signal.shape)}")
    signal = np.append(signal[0], signal[1:] - preemph * signal[:-1])
    frame_len, frame_step = _round_half_up(winlen * sample_rate), _round_half_up(winstep * sample_rate)
    count = 1 if signal.size <= frame_len else 1 + math.ceil((signal.size - frame_len) / frame_step)
    padded = np.concatenate([signal, np.zeros((count - 1) * frame_step + frame_len - signal.size)])
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame_len)[::frame_step][:count]
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    eps = np.finfo(float).eps
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, eps, energy)  # log(0) guards, as python_speech_features
    feat = power @ _mel_filterbank(nfilt, nfft, sample_rate, 0, sample_rate / 2).T
    feat = np.where(feat == 0, eps, feat)
    cep = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :numcep]
    cep *= 1 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(numcep) / ceplifter)
    cep[:, 0] = np.log(energy)
    return cep


# --- video frames and face crops ----------------------------------------------------------------

def resample_indices(num_frames: int, fps: float, target_fps: float = SYNCNET_FPS) -> np.ndarray:
    """Input frame index for each output frame at `target_fps` (nearest in time, halves rounded up)."""
    if fps <= 0 or num_frames <= 0:
        raise ValueError(f"need frames and a positive fps, got {num_frames} frames at {fps}")
    count = max(1, _round_half_up(num_frames * target_fps / fps))
    return np.minimum(np.floor(np.arange(count) * fps / target_fps + 0.5).astype(int), num_frames - 1)


def smooth_boxes(boxes: np.ndarray, kernel: int = 13) -> np.ndarray:
    """syncnet_python's smoothing: median filters (kernel 13) over box half-size and centre.

    boxes float [T, 4] (x0, y0, x1, y1) -> float [T, 3] (half-size s, centre x, centre y).
    """
    from scipy.signal import medfilt

    boxes = np.asarray(boxes, dtype=np.float64)
    size = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    kernel = min(kernel, len(boxes) - (1 - len(boxes) % 2))  # medfilt needs an odd kernel <= length
    if kernel < 3:
        return np.stack([size, cx, cy], axis=1)
    return np.stack([medfilt(v, kernel) for v in (size, cx, cy)], axis=1)


def syncnet_crop(frame_rgb: np.ndarray, half_size: float, cx: float, cy: float, crop_scale: float = 0.4) -> np.ndarray:
    """syncnet_python's `crop_video` for one frame: uint8 BGR [224, 224, 3].

    The frame is padded by bs * (1 + 2 * crop_scale) with grey 110, and the crop spans
    [cy - bs, cy + bs * (1 + 2 cs)] x [cx - bs (1 + cs), cx + bs (1 + cs)]: it reaches below the box
    to include the mouth and chin.
    """
    import cv2

    bs = half_size
    pad = int(bs * (1 + 2 * crop_scale))
    bgr = np.ascontiguousarray(frame_rgb[..., ::-1])
    padded = np.pad(bgr, ((pad, pad), (pad, pad), (0, 0)), mode="constant", constant_values=110)
    my, mx = cy + pad, cx + pad
    face = padded[int(my - bs):int(my + bs * (1 + 2 * crop_scale)), int(mx - bs * (1 + crop_scale)):
                  int(mx + bs * (1 + crop_scale))]
    if face.size == 0:
        raise ValueError(f"empty SyncNet crop (box half-size {bs:.1f} at ({cx:.1f}, {cy:.1f}))")
    return cv2.resize(face, (224, 224))


# --- embeddings and distances -------------------------------------------------------------------

def window_count(num_frames: int, num_samples: int) -> int:
    """Number of 5-frame windows: min(frames, samples // 640) - 5 (syncnet_python's `lastframe`)."""
    return max(0, min(num_frames, num_samples // _SAMPLES_PER_FRAME) - 5)


@torch.inference_mode()
def syncnet_embeddings(model, crops_bgr: np.ndarray, mfcc_feats: np.ndarray, num_windows: int,
                       batch_size: int = 20, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(lip embeddings [W, D], audio embeddings [W, D]) for windows 0..num_windows-1.

    crops_bgr: uint8 [T, 224, 224, 3] 25-fps face crops; mfcc_feats: float [steps, 13] at 100 Hz.
    """
    if num_windows <= 0:
        raise ValueError("video or audio too short for one SyncNet window (5 frames = 0.2 s)")
    video = torch.from_numpy(np.ascontiguousarray(crops_bgr)).permute(3, 0, 1, 2).float()  # [3, T, H, W]
    cepstra = torch.from_numpy(np.ascontiguousarray(mfcc_feats.T)).float()  # [13, steps]
    if cepstra.shape[1] < 4 * (num_windows - 1) + 20:
        raise ValueError(f"{cepstra.shape[1]} MFCC steps, need {4 * (num_windows - 1) + 20} for {num_windows} windows")
    lips, audio = [], []
    for start in range(0, num_windows, batch_size):
        idx = range(start, min(num_windows, start + batch_size))
        lips.append(model.forward_lip(torch.stack([video[:, i:i + 5] for i in idx]).to(device)).cpu())
        audio.append(model.forward_aud(torch.stack([cepstra[None, :, 4 * i:4 * i + 20] for i in idx]).to(device)).cpu())
    return torch.cat(lips), torch.cat(audio)


def offset_distances(lip: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """dists float [W, 2 * vshift + 1]: dists[i, j] = |lip_i - audio_{i + j - vshift}| (syncnet's calc_pdist,
    including pairwise_distance's eps = 1e-6 and zero audio embeddings past the ends)."""
    padded = F.pad(audio, (0, 0, vshift, vshift))
    window = 2 * vshift + 1
    return torch.stack([F.pairwise_distance(lip[[i]].repeat(window, 1), padded[i:i + window])
                        for i in range(len(lip))])


@dataclass
class SyncScore:
    sync_c: float  # confidence: median - min of the mean distance curve
    sync_d: float  # distance at the best offset
    offset: int  # frames; positive: audio leads the video
    windows: int


def sync_scores(dists: torch.Tensor | np.ndarray, vshift: int = VSHIFT) -> SyncScore:
    """Sync-C / Sync-D / offset from per-window distances [W, 2 * vshift + 1] (the windows to pool)."""
    dists = torch.as_tensor(dists)
    if dists.ndim != 2 or dists.shape[0] == 0:
        raise ValueError(f"need distances [windows >= 1, offsets], got {list(dists.shape)}")
    curve = dists.mean(dim=0)
    minval, minidx = torch.min(curve, 0)
    # torch.median returns the lower middle value for an even count, as syncnet_python (torch) does;
    # with 31 offsets the count is odd anyway.
    return SyncScore(float(torch.median(curve) - minval), float(minval), int(vshift - minidx), int(dists.shape[0]))


def interval_windows(intervals, num_windows: int, fps: float = SYNCNET_FPS) -> list[np.ndarray]:
    """Per interval, the windows i whose five frames i..i+4 all lie in [start, end] (t = frame / fps)."""
    starts = np.arange(num_windows)
    out = []
    for start, end in intervals:
        inside = (starts / fps >= start - 1e-9) & ((starts + 4) / fps <= end + 1e-9)
        out.append(np.flatnonzero(inside))
    return out


@dataclass
class SpeakerSync:
    name: str
    sync_c_star: float | None  # length-weighted mean over this speaker's measured intervals
    sync: SyncScore | None  # standard Sync-C / Sync-D of this face against its track over the whole video
    intervals: list[dict] = field(default_factory=list)  # start, end, windows, sync_c, sync_d, offset
    skipped: list[dict] = field(default_factory=list)  # intervals without a full window, with the reason
    filled_frames: int = 0  # 25-fps frames where the face was not found and the nearest box was used

    def to_dict(self) -> dict:
        return asdict(self)


def sync_c_star(speakers: Sequence[SpeakerSync]) -> float | None:
    """Sync-C* over all speakers: interval confidences weighted by interval length (seconds)."""
    pairs = [(item["end"] - item["start"], item["sync_c"]) for s in speakers for item in s.intervals]
    total = sum(weight for weight, _ in pairs)
    return sum(weight * value for weight, value in pairs) / total if total > 0 else None


def speaker_sync(name: str, dists: torch.Tensor, intervals, fps: float = SYNCNET_FPS,
                 vshift: int = VSHIFT) -> SpeakerSync:
    """One face against its own track: whole-video Sync-C/D and the per-interval confidences."""
    result = SpeakerSync(name, None, sync_scores(dists, vshift) if len(dists) else None)
    for (start, end), windows in zip(intervals, interval_windows(intervals, len(dists), fps), strict=True):
        if len(windows) == 0:
            result.skipped.append({"start": start, "end": end,
                                   "reason": "no full 5-frame (0.2 s) SyncNet window inside the interval"})
            continue
        score = sync_scores(dists[windows], vshift)
        result.intervals.append({"start": start, "end": end, "windows": score.windows, "sync_c": score.sync_c,
                                 "sync_d": score.sync_d, "offset": score.offset})
    result.sync_c_star = sync_c_star([result])
    return result


def face_crops_25fps(frames: np.ndarray, fps: float, boxes: np.ndarray) -> tuple[np.ndarray, int]:
    """(uint8 BGR [T25, 224, 224, 3] SyncNet crops of one face, number of filled frames), from frames
    at `fps` and the face's boxes [F, 4].

    Frames where the face was not found (NaN box) take the nearest found box: a crop must exist for
    every window. How many were filled is returned and reported with the scores.
    """
    idx = resample_indices(len(frames), fps)
    boxes = np.asarray(boxes, dtype=np.float64)[idx]
    found = np.isfinite(boxes).all(axis=1)
    if not found.any():
        raise ValueError("the face was not found in any frame")
    nearest = np.flatnonzero(found)[np.abs(np.arange(len(boxes))[:, None] - np.flatnonzero(found)[None]).argmin(1)]
    smoothed = smooth_boxes(boxes[nearest])
    crops = np.stack([syncnet_crop(frames[i], *smoothed[k]) for k, i in enumerate(idx)])
    return crops, int((~found).sum())


def evaluate_sync(model, frames: np.ndarray, fps: float, tracks_boxes: np.ndarray, audio_tracks: Sequence[np.ndarray],
                  intervals: Sequence | None, names: Sequence[str], device: str | torch.device = "cpu") -> dict:
    """Sync-C / Sync-D per face and Sync-C* for one video.

    tracks_boxes float [F, N, 4] (from tracking.track_faces); audio_tracks: N mono float waveforms at
    16 kHz in [-1, 1] (face i against track i); intervals: per person a list of (start_s, end_s) or None
    (then no Sync-C*).
    """
    speakers = []
    for person, name in enumerate(names):
        crops, filled = face_crops_25fps(frames, fps, tracks_boxes[:, person])
        wave = np.asarray(audio_tracks[person], dtype=np.float64) * _INT16_SCALE  # SyncNet's int16 scale
        feats = mfcc(wave)
        windows = window_count(len(crops), wave.size)
        lip, aud = syncnet_embeddings(model, crops, feats, windows, device=device)
        dists = offset_distances(lip, aud)
        speaker = speaker_sync(name, dists, intervals[person] if intervals is not None else [])
        speaker.filled_frames = filled
        speakers.append(speaker)
    scored = [s.sync for s in speakers if s.sync is not None]
    return {
        "sync_c": float(np.mean([s.sync_c for s in scored])) if scored else None,
        "sync_d": float(np.mean([s.sync_d for s in scored])) if scored else None,
        "sync_c_star": sync_c_star(speakers) if intervals is not None else None,
        "speakers": [s.to_dict() for s in speakers],
    }
