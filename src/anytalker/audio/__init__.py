"""Speech tracks: decoding (`io`), placing N tracks on one timeline and mixing them (`alignment`),
and who speaks when (`activity`). numpy in and out; torch is imported only for Silero VAD and
transformers only for the shared waveform checks of `anytalker.encoders.wav2vec`.
"""

from .activity import VAD_METHODS, speaking_intervals
from .alignment import ALIGN_MODES, AlignedTracks, align_tracks, mix_tracks
from .io import SILENCE_PEAK, AudioError, load_audio, normalize_loudness, resample

__all__ = [
    "ALIGN_MODES",
    "SILENCE_PEAK",
    "VAD_METHODS",
    "AlignedTracks",
    "AudioError",
    "align_tracks",
    "load_audio",
    "mix_tracks",
    "normalize_loudness",
    "resample",
    "speaking_intervals",
]
