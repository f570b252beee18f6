"""Puppet voices: procedural voiced syllables (default), or espeak-ng when it is installed and asked for.

Procedural speech is additive synthesis: a glottal source as a sum of harmonics of a time-varying
pitch, each harmonic weighted by a formant envelope (three resonances per vowel, scaled per voice
like a longer or shorter vocal tract) and a spectral tilt, plus shaped noise for consonants and
breath. Everything is numpy and deterministic from the generator. What matters for training is
that each voice is recognisably its own (pitch 85-280 Hz, formant scale 0.88-1.2, rate, tilt,
breathiness) and that its loudness rises and falls in syllables and phrases like speech does, so
the mouth, which follows that loudness, opens and closes at a speech-like rhythm.

espeak-ng (Debian package `espeak-ng`) reads pseudo-words aloud instead; its output depends on the
installed espeak-ng version, so procedural voices are the reproducible default.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from anytalker.audio import resample
from anytalker.audio.io import SAMPLE_RATE  # tracks are written at wav2vec2's rate: no resampling downstream

PEAK = 0.5           # every phrase is scaled to this peak; two overlapping voices stay near 1.0
VOICE_ENGINES = ("procedural", "espeak")

# (F1, F2, F3) in Hz for an adult vocal tract; a voice scales all three by its formant_scale.
VOWELS = {"a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (300, 2200, 3000),
          "o": (570, 840, 2410), "u": (440, 1020, 2240)}
# Consonant classes: plosives are a closure (silence) then a burst; fricatives are noise;
# sonorants are voiced and quiet, with their own low formants.
PLOSIVES = {"p": 1500, "t": 3500, "k": 2500, "b": 1200, "d": 3000, "g": 2200}  # burst centre Hz
FRICATIVES = {"s": 5500, "f": 4000, "h": 1500, "sh": 3000}
SONORANTS = {"m": (250, 1100, 2300), "n": (250, 1500, 2500), "l": (350, 1200, 2600), "r": (350, 1100, 1600)}
CONSONANTS = tuple(PLOSIVES) + tuple(FRICATIVES) + tuple(SONORANTS)
_CONTROL = 64  # samples between harmonic-amplitude updates
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")


@dataclass(frozen=True)
class Voice:
    f0: float             # Hz: median pitch
    formant_scale: float  # vocal tract: >1 shorter (child-like), <1 longer
    rate: float           # syllables per second
    tilt: float           # harmonic k has amplitude k**-tilt: higher is darker
    breath: float         # noise mixed into voiced sound
    jitter: float         # pitch wobble (fraction)
    espeak_variant: str   # voice variant when espeak-ng speaks
    espeak_pitch: int     # 0-99
    espeak_speed: int     # words per minute

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        register = "deep" if self.f0 < 125 else "high" if self.f0 > 200 else "medium"
        pace = "fast" if self.rate > 5.2 else "slow" if self.rate < 4.2 else "steady"
        return f"{register} {pace} voice"


def sample_voice(rng: np.random.Generator) -> Voice:
    f0 = float(np.exp(rng.uniform(np.log(85), np.log(280))))
    # Higher voices tend to come with shorter vocal tracts; the spread keeps it from being a rule.
    scale = float(np.clip(0.88 + 0.3 * (np.log(f0 / 85) / np.log(280 / 85)) + rng.normal(0, 0.04), 0.85, 1.22))
    variant = ESPEAK_VARIANTS[rng.integers(len(ESPEAK_VARIANTS))]
    return Voice(f0=f0, formant_scale=scale, rate=float(rng.uniform(3.8, 5.8)), tilt=float(rng.uniform(0.9, 1.5)),
                 breath=float(rng.uniform(0.0, 0.12)), jitter=float(rng.uniform(0.005, 0.02)),
                 espeak_variant=variant, espeak_pitch=int(np.clip((f0 - 85) / 195 * 80 + 10, 0, 99)),
                 espeak_speed=int(rng.uniform(150, 200)))


def random_syllables(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """`count` (consonant, vowel) pairs; about 1 in 5 syllables has no consonant."""
    vowels = list(VOWELS)
    return [("" if rng.random() < 0.2 else CONSONANTS[rng.integers(len(CONSONANTS))], vowels[rng.integers(5)])
            for _ in range(count)]


def phrase_text(syllables: list[tuple[str, str]], word_breaks: list[int]) -> str:
    """Pseudo-words for captions and espeak-ng: 'bati lomu ke'."""
    words, word = [], ""
    for i, (c, v) in enumerate(syllables):
        word += c + v
        if i + 1 in word_breaks or i + 1 == len(syllables):
            words.append(word)
            word = ""
    return " ".join(words)


def _raised_cosine(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, max(n, 1)))


def _formant_gain(freq: np.ndarray, formants: np.ndarray) -> np.ndarray:
    """Magnitude of three second-order resonances in cascade at `freq` ([..., K]); formants [..., 3]."""
    gain = np.ones_like(freq)
    for i, bandwidth in enumerate((90.0, 110.0, 170.0)):
        f = formants[..., i : i + 1]
        r = freq / f
        gain = gain / np.sqrt((1 - r**2) ** 2 + (freq * bandwidth / f**2) ** 2)
    return gain


def _shaped_noise(rng: np.random.Generator, n: int, centre: float, width: float, sr: int) -> np.ndarray:
    """White noise band-passed in the frequency domain (a Gaussian bump at `centre`), unit RMS."""
    if n <= 0:
        return np.zeros(0)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum *= np.exp(-0.5 * ((freqs - centre) / width) ** 2)
    out = np.fft.irfft(spectrum, n)
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def synthesize_phrase(voice: Voice, syllables: list[tuple[str, str]], rng: np.random.Generator,
                      sample_rate: int = SAMPLE_RATE, *, question: bool = False,
                      word_breaks: list[int] | None = None) -> np.ndarray:
    """float32 mono phrase, peak PEAK, starting and ending with sound (no leading/trailing silence)."""
    sr = sample_rate
    syllable_s = 1.0 / voice.rate
    word_breaks = word_breaks or []
    # Per-sample control tracks, built syllable by syllable.
    f0_parts, formant_parts, voiced_parts, noise_parts = [], [], [], []
    count = len(syllables)
    for i, (consonant, vowel) in enumerate(syllables):
        stress = rng.uniform(0.55, 1.0)
        vowel_n = int(syllable_s * rng.uniform(0.55, 0.8) * sr)
        cons_n = int(rng.uniform(0.04, 0.08) * sr) if consonant else 0
        gap_n = int(rng.uniform(0.04, 0.09) * sr) if (i + 1) in word_breaks else 0
        n = cons_n + vowel_n + gap_n
        progress = (i + np.arange(n) / n) / count
        # Declination over the phrase, a final fall (or rise for a question), stress bumps.
        contour = 1.12 - 0.22 * progress
        contour = contour + (0.25 if question else -0.08) * np.clip((progress - 0.8) / 0.2, 0, 1)
        f0_parts.append(voice.f0 * contour * (1 + 0.06 * (stress - 0.75)))
        target = np.array(VOWELS[vowel]) * voice.formant_scale
        formants = np.tile(target, (n, 1)).astype(np.float64)
        voiced = np.zeros(n)
        noise = np.zeros(n)
        attack, release = int(0.025 * sr), int(0.045 * sr)
        env = np.ones(vowel_n)  # vowel_n >= 1500 samples: longer than attack + release
        env[:attack] = _raised_cosine(attack)
        env[-release:] = _raised_cosine(release)[::-1]
        voiced[cons_n : cons_n + vowel_n] = stress * env
        if consonant in SONORANTS:
            formants[:cons_n] = np.array(SONORANTS[consonant]) * voice.formant_scale
            voiced[:cons_n] = 0.3 * stress * _raised_cosine(cons_n)
        elif consonant in FRICATIVES and cons_n:
            shape = np.sin(np.linspace(0, np.pi, cons_n))
            noise[:cons_n] = 0.35 * stress * shape * _shaped_noise(rng, cons_n, FRICATIVES[consonant], 900, sr)
        elif consonant in PLOSIVES and cons_n:
            burst = int(0.012 * sr)
            noise[cons_n - burst : cons_n] = 0.5 * stress * _shaped_noise(rng, burst, PLOSIVES[consonant], 1200, sr)
        # Formant transition from the consonant into the vowel over 30 ms.
        if cons_n:
            ramp = min(int(0.03 * sr), vowel_n)
            start = formants[cons_n - 1] if consonant in SONORANTS else target * np.array([0.6, 0.9, 1.0])
            w = np.linspace(0, 1, ramp)[:, None]
            formants[cons_n : cons_n + ramp] = start * (1 - w) + target * w
        formant_parts.append(formants)
        voiced_parts.append(voiced)
        noise_parts.append(noise)

    f0 = np.concatenate(f0_parts)
    n_total = f0.size
    wobble = np.cumsum(rng.standard_normal(n_total)) / np.sqrt(sr)  # a slow random walk
    f0 = f0 * (1 + voice.jitter * np.clip(wobble, -3, 3))
    formants = np.concatenate(formant_parts)
    voiced = np.concatenate(voiced_parts)
    noise = np.concatenate(noise_parts)

    phase = 2 * np.pi * np.cumsum(f0) / sr
    harmonics = int(0.47 * sr / f0.min())
    k = np.arange(1, harmonics + 1)[None, :]
    # Harmonic amplitudes change slowly (pitch and formants glide): evaluate them every 4 ms and
    # interpolate, which is 64x less work than per sample and inaudible.
    control = np.arange(0, n_total + _CONTROL, _CONTROL).clip(max=n_total - 1)
    freq = k * f0[control, None]
    amp_control = k ** (-voice.tilt) * _formant_gain(freq, formants[control]) * (freq < 0.47 * sr)
    out = np.zeros(n_total)
    chunk = 4096  # bounds the [samples, harmonics] work arrays
    for s in range(0, n_total, chunk):
        idx = np.arange(s, min(s + chunk, n_total))
        pos = idx / _CONTROL
        lo = np.floor(pos).astype(int)
        w = (pos - lo)[:, None]
        amp = amp_control[lo] * (1 - w) + amp_control[np.minimum(lo + 1, len(control) - 1)] * w
        out[idx] = np.sum(amp * np.sin(k * phase[idx, None]), axis=1)
    out = out / (np.percentile(np.abs(out[voiced > 0.5]), 99) + 1e-12) if (voiced > 0.5).any() else out
    out = out * voiced
    if voice.breath:
        out = out + voice.breath * voiced * _shaped_noise(rng, n_total, 2500, 2000, sr)
    out = out + noise
    # Trim to the first and last audible samples: phrases start and end with sound.
    audible = np.flatnonzero(np.abs(out) > 1e-3 * np.abs(out).max())
    out = out[audible[0] : audible[-1] + 1]
    return (out * (PEAK / np.abs(out).max())).astype(np.float32)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak_phrase(voice: Voice, text: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The phrase spoken by espeak-ng (22.05 kHz, resampled), silence trimmed, peak PEAK."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (Debian: apt-get install espeak-ng); use voice='procedural'")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "phrase.wav"
        subprocess.run([exe, "-v", f"en+{voice.espeak_variant}", "-p", str(voice.espeak_pitch),
                        "-s", str(voice.espeak_speed), "-w", str(path), text], check=True, capture_output=True)
        with wave.open(str(path)) as handle:
            rate, width = handle.getframerate(), handle.getsampwidth()
            raw = handle.readframes(handle.getnframes())
    if width != 2:
        raise RuntimeError(f"espeak-ng wrote {8 * width}-bit samples; expected 16-bit")
    audio = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    audio = resample(audio, rate, sample_rate)
    audible = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
    if audible.size == 0:
        raise RuntimeError(f"espeak-ng produced silence for {text!r}")
    audio = audio[audible[0] : audible[-1] + 1]
    return (audio * (PEAK / np.abs(audio).max())).astype(np.float32)
