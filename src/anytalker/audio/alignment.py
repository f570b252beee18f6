"""N per-person tracks -> N equal-length tracks on one timeline, and the soundtrack that goes with them.

Two ways to read the inputs (the release's `audio_type`):
- `pad` (MultiTalk: `para`): the tracks are already on one timeline (each person's file holds silence
  while the others speak). Shorter tracks are zero-padded at the end to the longest; nothing is cut.
- `concat` (MultiTalk: `add`): each file is one turn. Turn i starts where turn i-1 ends, or at an
  explicit offset in seconds. Output track i is person i's audio at its place, zeros elsewhere.

`mix_tracks` makes the video's soundtrack: the plain sum, as MultiTalk's `sum_human_speechs`, but
with a peak limiter (an unguarded sum of loud overlapping speech clips) and without a 1/N average
(which would halve a lone speaker's volume).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .io import SAMPLE_RATE, validate_waveform

__all__ = ["ALIGN_MODES", "AlignedTracks", "align_tracks", "mix_tracks"]

# User-facing names -> canonical mode; MultiTalk's names are accepted as aliases.
ALIGN_MODES = {"pad": "pad", "para": "pad", "concat": "concat", "add": "concat"}


def _as_track(track, index: int) -> np.ndarray:
    """Validates one track with wav2vec's rules (1-D, float, non-empty, finite, not constant)."""
    try:
        return validate_waveform(track)
    except ValueError as error:
        raise ValueError(f"track {index}: {error}") from None


@dataclass(frozen=True)
class AlignedTracks:
    """N tracks of equal length on one timeline.

    `placements[i]` = (start_s, end_s): where input track i lies on the timeline. In concat mode that
    span is person i's turn, so it is also their speaking interval by construction; in pad mode it
    is the whole input track, and who speaks when must be detected (see `speaking_intervals`).
    """

    tracks: tuple[np.ndarray, ...]  # N x float32 [num_samples]
    sample_rate: int
    mode: str  # "pad" | "concat"
    placements: tuple[tuple[float, float], ...]

    @property
    def num_samples(self) -> int:
        return int(self.tracks[0].shape[0])

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    def video_frame_count(self, fps: int = 24) -> int:
        """F (a 4n+1 frame count) for the common timeline, the release's rule in encoders.wav2vec."""
        from anytalker.encoders.wav2vec import video_frame_count

        return video_frame_count(self.num_samples, self.sample_rate, fps)

    def mix(self, ceiling: float = 1.0) -> np.ndarray:
        return mix_tracks(self.tracks, ceiling=ceiling, sample_rate=self.sample_rate)

    def speaking_intervals(self, **vad_options) -> list[list[tuple[float, float]]]:
        """Per person, when they speak: the turn span in concat mode, voice activity in pad mode."""
        if self.mode == "concat":
            return [[placement] for placement in self.placements]
        from .activity import speaking_intervals

        return [speaking_intervals(track, self.sample_rate, **vad_options) for track in self.tracks]


def align_tracks(
    tracks: Sequence,
    mode: str = "pad",
    *,
    offsets_s: Sequence[float] | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> AlignedTracks:
    """Places N mono tracks (same sample rate) on one timeline and returns N equal-length tracks.

    `offsets_s` (concat mode only): each turn's start in seconds, rounded to the nearest sample;
    turns may overlap. Without it, turns follow each other in the order given.
    """
    if mode not in ALIGN_MODES:
        raise ValueError(f"unknown alignment mode {mode!r}: expected one of {', '.join(ALIGN_MODES)}")
    mode = ALIGN_MODES[mode]
    if len(tracks) == 0:
        raise ValueError("no tracks to align: pass one track per person")
    waves = [_as_track(track, i) for i, track in enumerate(tracks)]
    lengths = [wave.shape[0] for wave in waves]

    if mode == "pad":
        if offsets_s is not None:
            raise ValueError("offsets_s places turns in concat mode; pad-mode tracks already share one timeline")
        starts = [0] * len(waves)
    elif offsets_s is None:
        starts = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(int).tolist()
    else:
        if len(offsets_s) != len(waves):
            raise ValueError(f"offsets_s has {len(offsets_s)} entries for {len(waves)} tracks: give one per track")
        if any(not np.isfinite(offset) or offset < 0 for offset in offsets_s):
            raise ValueError(f"offsets_s must be finite and >= 0 seconds, got {list(offsets_s)}")
        starts = [round(offset * sample_rate) for offset in offsets_s]

    total = max(start + length for start, length in zip(starts, lengths))
    aligned = []
    for wave, start in zip(waves, starts):
        out = np.zeros(total, np.float32)
        out[start : start + wave.shape[0]] = wave
        aligned.append(out)
    placements = tuple((start / sample_rate, (start + n) / sample_rate) for start, n in zip(starts, lengths))
    return AlignedTracks(tuple(aligned), sample_rate, mode, placements)


def _running_min(values: np.ndarray, width: int) -> np.ndarray:
    """out[i] = min(values[i : i + width]) ("valid" windows), in log2(width) vectorised passes."""
    out, span = values, 1
    while 2 * span <= width:  # invariant: out[i] = min(values[i : i + span])
        out, span = np.minimum(out[:-span], out[span:]), 2 * span
    count = values.shape[0] - width + 1
    return np.minimum(out[:count], out[width - span :][:count])  # two overlapping spans cover width


def _moving_average(values: np.ndarray, width: int) -> np.ndarray:
    """out[i] = mean(values[i : i + width]) ("valid" windows)."""
    cumulative = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    return (cumulative[width:] - cumulative[:-width]) / width


def mix_tracks(tracks: Sequence, ceiling: float = 1.0, window_s: float = 0.02, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The soundtrack: the sum of the tracks (zero-padded to the longest), peak-limited to ±ceiling.

    Limiter: the gain each sample needs, g = min(1, ceiling / |sum|), is turned into a smooth gain
    curve by a running minimum over ±window followed by a moving average over ±window. Every
    average at t only sees minima of windows that contain t, so the smoothed gain never exceeds g
    at any sample: the output cannot pass the ceiling, and the gain fades in and out over
    2 x window (40 ms) around loud overlaps instead of squaring off the waveform (hard clipping).
    Where the sum stays within ±ceiling for a whole window the gain is exactly 1: the sum passes
    unchanged, and one track that does not clip mixes to itself.
    """
    if len(tracks) == 0:
        raise ValueError("no tracks to mix")
    if not ceiling > 0:
        raise ValueError(f"ceiling must be > 0, got {ceiling}")
    waves = [np.asarray(track, dtype=np.float32) for track in tracks]
    if any(wave.ndim != 1 for wave in waves):
        raise ValueError(f"tracks must be 1-D mono, got shapes {[wave.shape for wave in waves]}")
    if not all(np.isfinite(wave).all() for wave in waves):
        raise ValueError("tracks hold non-finite samples (NaN or inf)")
    mixed = np.zeros(max(wave.shape[0] for wave in waves), np.float32)
    for wave in waves:
        mixed[: wave.shape[0]] += wave

    peak = np.abs(mixed)
    if peak.size == 0 or peak.max() <= ceiling:
        return mixed  # the common case: nothing to limit, the sum itself
    need = np.minimum(1.0, ceiling / np.maximum(peak, 1e-12))
    radius = max(1, round(window_s * sample_rate))
    width = 2 * radius + 1
    # Pad by 2 radius with the neutral gain 1: the running minimum then exists for every window
    # centre within ±radius of a real sample, and the average for every real sample.
    need = np.pad(need, 2 * radius, constant_values=1.0)
    gain = _moving_average(_running_min(need, width), width)
    # The bound gain <= need holds exactly; the clip only absorbs float rounding (an ulp or so).
    return np.clip(mixed * gain, -ceiling, ceiling).astype(np.float32)
