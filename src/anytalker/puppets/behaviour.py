"""How puppets move, frame by frame, from the script and the audio tracks.

- Speaking: the mouth opening is the puppet's own loudness envelope (frame RMS of its own track,
  scaled to 0..1 by its maximum), delayed by `MOUTH_LAG_FRAMES`; the head dips with loudness and
  the brows lift a little with it (each puppet has its own expressiveness).
- Everyone blinks (random intervals of 2.5-4 s, ~0.2 s each) and sways a fraction of a pixel.
- Listening (scenes of 2+ puppets only: someone else speaks, this one does not, plus 0.4 s after):
  the head and eyes turn toward the speaker, brows rise (with wider eyes) when a phrase begins and
  now and then during it, and the head nods at the ends of the speaker's phrases.
- Idle (a single puppet's silences, everyone's shared pauses): blinks, sway and breathing only. So
  single-puppet clips never show listening, as in the paper's stage-1 data.

Frame 0 is the neutral pose exactly (every clip starts silent; sway and breathing start at 0), so
the reference image is the clip's first frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .appearance import Appearance, Pose, head_size, tile_center
from .script import Script

MOUTH_LAG_FRAMES = 1   # the mouth trails its voice's envelope by one frame (42 ms at 24 fps)
LISTEN_HANGOVER_S = 0.4


@dataclass(frozen=True)
class Motion:
    """Per puppet and frame ([N, F] each); see Pose for the meaning of the pose channels."""

    dx: np.ndarray
    dy: np.ndarray
    yaw: np.ndarray
    gaze: np.ndarray
    eye_open: np.ndarray
    brow_raise: np.ndarray
    mouth_open: np.ndarray
    envelope: np.ndarray    # own track's frame RMS (linear amplitude, not normalised)
    speaking: np.ndarray    # bool
    listening: np.ndarray   # bool

    def pose(self, person: int, frame: int) -> Pose:
        return Pose(dx=float(self.dx[person, frame]), dy=float(self.dy[person, frame]),
                    yaw=float(self.yaw[person, frame]), gaze=float(self.gaze[person, frame]),
                    eye_open=float(self.eye_open[person, frame]), brow_raise=float(self.brow_raise[person, frame]),
                    mouth_open=float(self.mouth_open[person, frame]))

    @property
    def frames(self) -> int:
        return self.dx.shape[1]


def frame_envelope(track: np.ndarray, frames: int, fps: float, sample_rate: int) -> np.ndarray:
    """RMS of `track` in a Hann window two frames long centred on each frame's time t / fps."""
    hop = sample_rate / fps
    width = round(2 * hop) | 1
    window = np.hanning(width + 2)[1:-1]  # no zero end-points
    centres = np.round(np.arange(frames) * hop).astype(int)
    padded = np.pad(np.asarray(track, np.float64), width)
    segments = padded[centres[:, None] + np.arange(width)[None, :] + width - width // 2]
    return np.sqrt((segments**2 @ window) / window.sum())


def _smooth(x: np.ndarray, tau_frames: float) -> np.ndarray:
    """Causal one-pole low-pass: reactions trail their causes, as people's do."""
    alpha = 1.0 - np.exp(-1.0 / max(tau_frames, 1e-6))
    out = np.empty_like(x, dtype=np.float64)
    acc = 0.0
    for i, value in enumerate(x):  # ~100 frames: a plain loop is clearer than a filter design
        acc += alpha * (value - acc)
        out[i] = acc
    return out


def _pulse(times: np.ndarray, start: float, rise: float, hold: float, fall: float) -> np.ndarray:
    """0 -> 1 (raised cosine over `rise`) -> hold -> 0 (over `fall`); exactly 0 outside."""
    up = np.clip((times - start) / rise, 0, 1)
    down = np.clip((times - start - rise - hold) / fall, 0, 1)
    return (0.5 - 0.5 * np.cos(np.pi * up)) * (0.5 + 0.5 * np.cos(np.pi * down))


def _smooth_noise(rng: np.random.Generator, times: np.ndarray, period: float) -> np.ndarray:
    """A few random slow sinusoids, zero at t = 0, about unit amplitude."""
    out = np.zeros_like(times)
    for _ in range(3):
        f = rng.uniform(0.5, 1.5) / period
        out += np.sin(2 * np.pi * f * times + rng.uniform(0, 2 * np.pi))
    out -= np.interp(0.0, times, out)
    return out / 2.0


def animate(script: Script, tracks: np.ndarray, appearances: list[Appearance], tile: int, frames: int,
            fps: float, sample_rate: int, rng: np.random.Generator) -> Motion:
    persons = len(appearances)
    times = np.arange(frames) / fps
    env = np.stack([frame_envelope(track, frames, fps, sample_rate) for track in tracks])
    env_n = env / np.maximum(env.max(axis=1, keepdims=True), 1e-9)
    mouth = np.zeros_like(env_n)
    mouth[:, MOUTH_LAG_FRAMES:] = env_n[:, : frames - MOUTH_LAG_FRAMES]
    speaking = np.stack([script.speaking(i, times) for i in range(persons)])
    centres = np.array([tile_center(i, tile, app) for i, app in enumerate(appearances)])
    hangover = round(LISTEN_HANGOVER_S * fps)

    shape = (persons, frames)
    dx, dy, yaw, brow, eye_open = (np.zeros(shape) for _ in range(5))
    listening = np.zeros(shape, bool)
    for i, app in enumerate(appearances):
        H, _ = head_size(app, tile)
        others = [j for j in range(persons) if j != i]
        # Idle: sway and breathing for everyone, from zero at frame 0.
        dx[i] = 0.25 * _smooth_noise(rng, times, 3.0)
        dy[i] = 0.15 * np.sin(2 * np.pi * times / rng.uniform(3.0, 4.5))
        # Speaking: head dips on loud syllables, brows follow emphasis.
        dy[i] += rng.uniform(0.02, 0.035) * H * _smooth(env_n[i], 0.08 * fps)
        brow[i] += rng.uniform(0.15, 0.4) * _smooth(env_n[i], 0.1 * fps)
        yaw_target = np.zeros(frames)
        if others:
            # Speakers address the others; listeners face whoever is talking (loudest first).
            toward_others = np.sign(centres[others].mean() - centres[i])
            yaw_target[speaking[i]] = 0.4 * toward_others
            others_on = speaking[others].any(axis=0)
            raw = others_on & ~speaking[i]
            held = raw.copy()
            for lag in range(1, hangover + 1):  # keep listening a moment after the speaker stops
                held[lag:] |= raw[:-lag]
            listening[i] = held & ~speaking[i]
            weights = env_n[others] * speaking[others]
            direction = np.sign(centres[others] - centres[i])[:, None]
            pull = (weights * direction).sum(axis=0) / np.maximum(weights.sum(axis=0), 1e-9)
            last = 0.0
            for t in range(frames):
                if raw[t] and weights[:, t].sum() > 0:
                    last = pull[t]
                if listening[i, t]:
                    yaw_target[t] = 0.85 * last
            listen_brow = np.zeros(frames)
            nods = np.zeros(frames)
            for phrase in script.phrases:
                if phrase.speaker == i:
                    continue
                at_start = int(min(frames - 1, round(phrase.start * fps)))
                if listening[i, at_start] and rng.random() < 0.85:  # attention: brows up as they begin
                    listen_brow = np.maximum(listen_brow, rng.uniform(0.5, 1.0) * _pulse(
                        times, phrase.start + rng.uniform(0.1, 0.25), 0.12, rng.uniform(0.2, 0.5), 0.3))
                at_end = int(min(frames - 1, round(phrase.end * fps)))
                if listening[i, at_end] and rng.random() < 0.8:  # acknowledgement: a nod as they finish
                    nods = np.maximum(nods, _pulse(times, phrase.end + rng.uniform(0.03, 0.15), 0.18, 0.05, 0.25))
            # Extra brow flashes while listening, about one every 2.5 s.
            for t0 in times[listening[i]]:
                if rng.random() < 1.0 / (2.5 * fps):
                    listen_brow = np.maximum(listen_brow, rng.uniform(0.4, 0.8) * _pulse(times, t0, 0.12, 0.2, 0.3))
            brow[i] += listen_brow
            eye_open[i] = 0.15 * listen_brow  # wider eyes with raised brows
            dy[i] += rng.uniform(0.04, 0.06) * H * nods
        yaw[i] = _smooth(yaw_target, 0.12 * fps) + 0.04 * _smooth_noise(rng, times, 4.0)
        # Blinks: everyone, every 2.5-4 s on average, never in the first 0.3 s (neutral frame 0).
        blinks = np.zeros(frames)
        t = 0.3 + rng.exponential(rng.uniform(2.5, 4.0) * 0.6)
        while t < times[-1] + 0.2:
            blinks = np.maximum(blinks, _pulse(times, t, 0.07, 0.03, 0.1))
            t += 0.4 + rng.exponential(rng.uniform(2.5, 4.0))
        eye_open[i] = (1.0 + eye_open[i]) * (1.0 - 0.92 * blinks)
    brow = np.clip(brow, 0.0, 1.0)
    gaze = np.clip(np.stack([_smooth(np.clip(1.3 * y, -1, 1), 0.05 * fps) for y in yaw]), -1, 1)
    return Motion(dx=dx, dy=dy, yaw=yaw, gaze=gaze, eye_open=eye_open, brow_raise=brow, mouth_open=mouth,
                  envelope=env.astype(np.float32), speaking=speaking, listening=listening)
