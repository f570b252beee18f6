"""Vocal separation with a model file the user supplies (nothing is downloaded).

Speech tracks with music or noise under them drive the lips worse; the release separates
vocals first. Separator networks come in many formats, so the contract here is a TorchScript
module the user exports from their separator (Demucs, MDX-Net, ...):

    module(waveform: Tensor[channels, samples]) -> Tensor[channels, samples]   # the vocals
    module.sample_rate: int                                                    # its input rate
    module.channels: int (optional, default 2)                                 # channels it expects

Tracks are resampled to the separator's rate and channel count, separated, and brought back
to mono at the caller's rate.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .io import AudioError, resample


class VocalSeparator:
    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"separation model not found: {path} (a TorchScript file; see "
                                    "anytalker.audio.separation for the expected interface)")
        try:
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as error:
            raise AudioError(f"{path} is not a TorchScript separation model ({error})") from None
        if not hasattr(self.module, "sample_rate"):
            raise AudioError(f"{path}: the separation module must define an integer `sample_rate` attribute")
        self.sample_rate = int(self.module.sample_rate)
        self.channels = int(getattr(self.module, "channels", 2))

    @torch.no_grad()
    def __call__(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono float32 [samples] at `sample_rate` -> its vocals, same rate and length."""
        wave = np.asarray(wave, dtype=np.float32)
        native = resample(wave, sample_rate, self.sample_rate)
        source = torch.from_numpy(np.ascontiguousarray(np.repeat(native[None], self.channels, axis=0)))
        vocals = self.module(source)
        if tuple(vocals.shape) != tuple(source.shape):
            raise AudioError(f"separation model returned shape {tuple(vocals.shape)} for input {tuple(source.shape)}")
        mono = vocals.float().mean(0).numpy()
        out = resample(mono, self.sample_rate, sample_rate)
        return np.pad(out, (0, max(0, len(wave) - len(out))))[:len(wave)]
