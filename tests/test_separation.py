"""Vocal separation with a user-supplied TorchScript model."""

import numpy as np
import pytest
import torch

from anytalker.audio.io import AudioError
from anytalker.audio.separation import VocalSeparator


class LowPassVocals(torch.nn.Module):
    """A stand-in separator: keeps what is below 1 kHz (the 'voice') at 44.1 kHz stereo."""

    def __init__(self):
        super().__init__()
        self.sample_rate, self.channels = 44100, 2  # instance attributes survive scripting

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft(waveform, dim=-1)
        freqs = torch.fft.rfftfreq(waveform.shape[-1], 1.0 / 44100)
        return torch.fft.irfft(spectrum * (freqs < 1000).to(spectrum.dtype), n=waveform.shape[-1], dim=-1)


def test_separator_keeps_voice_removes_rest_and_keeps_length(tmp_path):
    path = tmp_path / "separator.pt"
    torch.jit.script(LowPassVocals()).save(str(path))
    separator = VocalSeparator(path)
    t = np.arange(16000) / 16000
    voice, music = 0.3 * np.sin(2 * np.pi * 200 * t), 0.3 * np.sin(2 * np.pi * 3000 * t)
    out = separator((voice + music).astype(np.float32), 16000)
    assert out.shape == (16000,) and out.dtype == np.float32
    core = slice(2000, 14000)  # away from the FFT's edge effects
    assert np.abs(out[core] - voice[core]).max() < 0.02


def test_separator_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="separation model not found"):
        VocalSeparator(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(AudioError, match="not a TorchScript"):
        VocalSeparator(tmp_path / "junk.pt")

    class NoRate(torch.nn.Module):
        def forward(self, x):
            return x

    torch.jit.script(NoRate()).save(str(tmp_path / "norate.pt"))
    with pytest.raises(AudioError, match="sample_rate"):
        VocalSeparator(tmp_path / "norate.pt")


def test_generate_uses_the_separator_for_features_only(tmp_path, monkeypatch):
    import soundfile as sf

    from anytalker.pipeline.tasks import GenerationTask, prepare_task

    torch.jit.script(LowPassVocals()).save(str(tmp_path / "sep.pt"))
    t = np.arange(32000) / 16000
    sf.write(tmp_path / "a.wav", (0.3 * np.sin(2 * np.pi * 200 * t) + 0.3 * np.sin(2 * np.pi * 3000 * t)), 16000)
    from PIL import Image

    Image.new("RGB", (64, 64), (128, 128, 128)).save(tmp_path / "img.png")
    task = GenerationTask("x", str(tmp_path / "img.png"), [str(tmp_path / "a.wav")], bboxes=["8,8,40,40"])
    plain = prepare_task(task)
    separated = prepare_task(task, separator=VocalSeparator(tmp_path / "sep.pt"))
    assert np.abs(separated.features_audio.tracks[0]).max() < 0.7 * np.abs(plain.features_audio.tracks[0]).max()
    np.testing.assert_array_equal(separated.output_audio.tracks[0], plain.output_audio.tracks[0])
