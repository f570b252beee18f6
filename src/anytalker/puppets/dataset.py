"""Scenes (everything about one clip, in memory) and clip folders on disk.

Clip folder layout (one folder per clip; `meta.json` is written last, so a folder without it is
unfinished and is redone by the next `make`):

    <OUT>/p<persons>_s<seed>_<index:05d>/
        video.mp4          H.264 yuv420p (crf VIDEO_CRF) + AAC mono mix at 16 kHz; `frames` frames
                           (4n+1) of height x width = tile x persons*tile, at `fps`
        reference.png      the neutral pose, identical to frame 0 of the render
        audio_<i>.wav      puppet i's own track, i = 0 the leftmost; 16-bit PCM mono 16 kHz,
                           `num_samples` = floor(frames * 16000 / fps) samples, all on one timeline
        ground_truth.npz   per-frame arrays, each [persons, frames, ...] (GROUND_TRUTH below)
        video.json         the sidecar `anytalker prepare` reads (caption, audio, speaking, boxes),
                           so `anytalker prepare OUT DATA` turns puppet clips into training shards
        meta.json          everything else:

    format "anytalker-puppets", version 1, name, seed (make_scene's: the clip is
    make_scene(persons, seed, tile=, fps=, frames=, voice=) again), persons, fps, frames, width,
    height, tile, sample_rate, num_samples, duration_s, voice_engine,
    files {video, reference, audio [..], ground_truth},
    caption                         str
    face_boxes                      [[x0, y0, x1, y1], ...] per puppet, left to right; whole pixels,
                                    x1/y1 exclusive (FaceBox); holds the head in every frame
    speaking_intervals              [[[start_s, end_s], ...], ...] per puppet: where its voice sounds
    turns                           the same with pauses < 0.5 s bridged (benchmark-style labels)
    script                          [{speaker, start, end, text, kind: phrase|backchannel}, ...]
    mouth_lag_frames                the mouth trails the own envelope by this many frames
    landmarks                       {layout "dlib68", indices [17..26, 36..47], convention}
    ground_truth                    {name: {shape, dtype, unit, description}} for the npz arrays
    puppets                         [{appearance {...}, voice {...}}, ...] left to right
    background                      {pattern, wall_name, wall, second, floor}
"""

from __future__ import annotations

import json
import math
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from anytalker.audio import mix_tracks
from anytalker.audio.io import SAMPLE_RATE
from anytalker.faces import FaceBox
from anytalker.utils.atomic import atomic_write, write_json_atomic
from anytalker.video.io import write_video

from .appearance import (
    NEUTRAL,
    Appearance,
    Background,
    article,
    describe,
    sample_appearance,
    sample_background,
)
from .behaviour import MOUTH_LAG_FRAMES, Motion, animate
from .render import render_frame, static_layer
from .script import Script, write_script
from .voice import VOICE_ENGINES, Voice, espeak_available, sample_voice

FORMAT = "anytalker-puppets"
VERSION = 1
LANDMARK_INDICES = list(range(17, 27)) + list(range(36, 48))  # dlib-68: brows, then eyes
MAX_PERSONS = 4
# Training clips are coded closer to lossless than write_video's default (18): at 64 px an eye is
# ~7 x 5 pixels, and crf 18's ringing there is a quarter of what a blink changes. crf 12 costs
# ~20% more bytes (a 3 s two-puppet video: ~50 KB; its two wavs take ~240 KB).
VIDEO_CRF = 12
PATTERN_WORDS = {"plain": "", "gradient": "shaded ", "stripes": "striped ", "dots": "dotted ", "panels": "panelled ",
                 "checks": "checked "}
COUNT_WORDS = {1: "A", 2: "Two", 3: "Three", 4: "Four"}
POSITIONS = {1: ["in the middle"], 2: ["on the left", "on the right"],
             3: ["on the left", "in the middle", "on the right"],
             4: ["on the far left", "second from the left", "second from the right", "on the far right"]}

# name: (unit, description); every array is [persons, frames, ...], persons left to right.
GROUND_TRUTH = {
    "mouth_open": ("0..1", "mouth opening (the own voice's loudness envelope, delayed by mouth_lag_frames)"),
    "mouth_height": ("px", "height of the dark mouth cavity (what measure.py reads back)"),
    "landmarks": ("px", ("[N, F, 22, 2] x, y of dlib-68 points 17-26 (brows) and 36-47 (eyes); pixel centres "
                         "at integer coordinates, as dlib and OpenCV")),
    "face_boxes": ("px", "[N, F, 4] x0, y0, x1, y1 of the head outline; pixel edges (pixel j spans [j, j+1))"),
    "eye_open": ("ratio", "eye height relative to neutral: ~0.08 closed (blink), 1 neutral, up to 1.15 wide"),
    "brow_raise": ("0..1", "brow lift (1 = 0.05 head heights)"),
    "yaw": ("-1..1", "head turn: negative toward the image's left"),
    "gaze": ("-1..1", "pupil shift, same sign as yaw"),
    "head_dx": ("px", "horizontal head offset from the neutral pose"),
    "head_dy": ("px", "vertical head offset (positive down: dips and nods)"),
    "speaking": ("bool", "inside one of the puppet's phrases"),
    "listening": ("bool", "someone else speaks and this puppet does not (or did < 0.4 s ago); never for 1 puppet"),
    "envelope": ("amplitude", "RMS of the puppet's own track, Hann window of 2 frames centred on t / fps"),
}


@dataclass(frozen=True)
class Scene:
    """One clip: reference image, per-puppet tracks, script, boxes and the ground-truth render."""

    persons: int
    seed: int
    fps: int
    sample_rate: int
    tile: int
    frames: np.ndarray           # uint8 [F, tile, persons * tile, 3] RGB
    reference: np.ndarray        # uint8 [tile, persons * tile, 3]: the neutral pose (== frames[0])
    tracks: np.ndarray           # float32 [persons, samples]: each puppet's own voice, on one timeline
    mix: np.ndarray              # float32 [samples]: the soundtrack (limited sum)
    script: Script
    face_boxes: tuple[FaceBox, ...]  # whole-clip head boxes, left to right
    ground_truth: dict           # name -> array, see GROUND_TRUTH
    caption: str
    appearances: tuple[Appearance, ...]
    voices: tuple[Voice, ...]
    background: Background
    motion: Motion
    voice_engine: str

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def duration(self) -> float:
        return self.tracks.shape[1] / self.sample_rate

    @property
    def speaking_intervals(self) -> list[list[tuple[float, float]]]:
        return [self.script.intervals(i) for i in range(self.persons)]


def frame_range(persons: int, fps: int, min_seconds: float | None, max_seconds: float | None) -> tuple[int, int]:
    """Smallest and largest 4n+1 frame counts within the duration bounds (the Wan VAE's frame rule)."""
    low = min_seconds if min_seconds is not None else (2.0 if persons <= 2 else 3.0)
    high = max_seconds if max_seconds is not None else 4.0
    first = math.ceil((low * fps - 1) / 4) * 4 + 1
    last = math.floor((high * fps - 1) / 4) * 4 + 1
    if last < first:
        raise ValueError(f"no 4n+1 frame count between {low} and {high} s at {fps} fps")
    return first, last


def make_scene(persons: int, seed: int, *, tile: int = 64, fps: int = 24, frames: int | None = None,
               min_seconds: float | None = None, max_seconds: float | None = None,
               voice: str = "procedural") -> Scene:
    """A whole clip from (persons, seed): same arguments, same scene, bit for bit.

    frames: the clip's frame count (a 4n+1 count keeps the Wan VAE's rule); by default drawn from
    the 4n+1 counts between min_seconds and max_seconds (2-4 s; 3-4 s for 3+ puppets, who all talk).
    voice: "procedural" (default, reproducible anywhere), "espeak" (needs espeak-ng), or "auto".
    """
    if isinstance(persons, bool) or not isinstance(persons, int) or not 1 <= persons <= MAX_PERSONS:
        raise ValueError(f"persons must be 1..{MAX_PERSONS}, got {persons!r}")
    if tile % 16 or tile < 32:
        raise ValueError(f"tile must be a multiple of 16 and >= 32 (the VAE and patching need it), got {tile}")
    if voice == "auto":
        voice = "espeak" if espeak_available() else "procedural"
    if voice not in VOICE_ENGINES:
        raise ValueError(f"voice must be one of {VOICE_ENGINES + ('auto',)}, got {voice!r}")
    # Independent streams: a change in one part (say the voices) leaves the others' draws alone.
    looks_seq, voice_seq, script_seq, motion_seq, length_seq = np.random.SeedSequence(seed).spawn(5)
    looks_rng = np.random.default_rng(looks_seq)
    appearances = tuple(sample_appearance(looks_rng) for _ in range(persons))
    background = sample_background(looks_rng)
    voice_rng = np.random.default_rng(voice_seq)
    voices = tuple(sample_voice(voice_rng) for _ in range(persons))
    if frames is None:
        first, last = frame_range(persons, fps, min_seconds, max_seconds)
        frames = int(np.random.default_rng(length_seq).integers(0, (last - first) // 4 + 1)) * 4 + first
    num_samples = frames * SAMPLE_RATE // fps  # floor: audio_frame_count(num_samples) == frames
    script_rng = np.random.default_rng(script_seq)
    for attempt in range(8):  # a short clip for 3-4 puppets can miss a turn; the next draw rarely does
        try:
            script, tracks = write_script(list(voices), num_samples, script_rng, engine=voice)
            break
        except ValueError:
            if attempt == 7:
                raise
    motion = animate(script, tracks, list(appearances), tile, frames, fps, SAMPLE_RATE,
                     np.random.default_rng(motion_seq))

    static = static_layer(background, appearances, tile)
    video = np.empty((frames, tile, tile * persons, 3), np.uint8)
    landmarks = np.zeros((persons, frames, 22, 2), np.float32)
    boxes = np.zeros((persons, frames, 4), np.float32)
    mouth_height = np.zeros((persons, frames), np.float32)
    for t in range(frames):
        video[t], geometries = render_frame(static, appearances, tile, [motion.pose(i, t) for i in range(persons)])
        for i, g in enumerate(geometries):
            landmarks[i, t] = g.landmarks()
            boxes[i, t] = g.box + np.array([-0.5, -0.5, 0.5, 0.5])  # extents of centres -> pixel edges
            mouth_height[i, t] = 2 * g.mouth[3]
    reference, _ = render_frame(static, appearances, tile, [NEUTRAL] * persons)

    face_boxes = tuple(_clip_box(boxes[i], tile * persons, tile) for i in range(persons))
    ground_truth = {
        "mouth_open": motion.mouth_open.astype(np.float32), "mouth_height": mouth_height, "landmarks": landmarks,
        "face_boxes": boxes, "eye_open": motion.eye_open.astype(np.float32),
        "brow_raise": motion.brow_raise.astype(np.float32), "yaw": motion.yaw.astype(np.float32),
        "gaze": motion.gaze.astype(np.float32), "head_dx": motion.dx.astype(np.float32),
        "head_dy": motion.dy.astype(np.float32), "speaking": motion.speaking, "listening": motion.listening,
        "envelope": motion.envelope.astype(np.float32),
    }
    return Scene(persons=persons, seed=int(seed), fps=fps, sample_rate=SAMPLE_RATE, tile=tile, frames=video,
                 reference=reference, tracks=tracks, mix=mix_tracks(list(tracks), sample_rate=SAMPLE_RATE),
                 script=script, face_boxes=face_boxes, ground_truth=ground_truth,
                 caption=caption(appearances, voices, background), appearances=appearances, voices=voices,
                 background=background, motion=motion, voice_engine=voice)


def _clip_box(boxes: np.ndarray, width: int, height: int) -> FaceBox:
    """The smallest whole-pixel box holding the head in every frame."""
    x0, y0 = max(0, math.floor(boxes[:, 0].min())), max(0, math.floor(boxes[:, 1].min()))
    x1, y1 = min(width, math.ceil(boxes[:, 2].max())), min(height, math.ceil(boxes[:, 3].max()))
    return FaceBox(x0, y0, x1, y1, detector="puppets")


def caption(appearances, voices, background: Background) -> str:
    n = len(appearances)
    pattern = PATTERN_WORDS[background.pattern]
    wall = f"{pattern}{background.wall_name} wall"
    setting = f"in front of {article(wall)} {wall}"
    if n == 1:
        return (f"{describe(appearances[0])[0].upper()}{describe(appearances[0])[1:]} talks to the camera "
                f"in a {voices[0].describe()}, {setting}.")
    people = "; ".join(f"{POSITIONS[n][i]}, {describe(app)}" for i, app in enumerate(appearances))
    return (f"{COUNT_WORDS[n]} cartoon puppets side by side {setting} take turns talking and react "
            f"to each other: {people}.")


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """`audio` (float, [-1, 1], clipped) as a 16-bit PCM mono wav, written atomically."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with atomic_write(path) as tmp, wave.open(str(tmp), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())


def clip_meta(scene: Scene, name: str) -> dict:
    persons = scene.persons
    return {
        "format": FORMAT, "version": VERSION, "name": name, "seed": scene.seed, "persons": persons,
        "fps": scene.fps, "frames": scene.num_frames, "width": scene.width, "height": scene.height,
        "tile": scene.tile, "sample_rate": scene.sample_rate, "num_samples": int(scene.tracks.shape[1]),
        "duration_s": round(scene.duration, 6), "voice_engine": scene.voice_engine,
        "files": {"video": "video.mp4", "reference": "reference.png",
                  "audio": [f"audio_{i}.wav" for i in range(persons)], "ground_truth": "ground_truth.npz"},
        "caption": scene.caption,
        "face_boxes": [list(box.as_tuple()) for box in scene.face_boxes],
        "speaking_intervals": [[list(iv) for iv in scene.script.intervals(i)] for i in range(persons)],
        "turns": [[list(iv) for iv in scene.script.turns(i)] for i in range(persons)],
        "script": scene.script.to_json(),
        "mouth_lag_frames": MOUTH_LAG_FRAMES,
        "landmarks": {"layout": "dlib68", "indices": LANDMARK_INDICES,
                      "convention": "pixel centres at integer coordinates"},
        "ground_truth": {name: {"shape": list(scene.ground_truth[name].shape),
                                "dtype": str(scene.ground_truth[name].dtype), "unit": unit, "description": text}
                         for name, (unit, text) in GROUND_TRUTH.items()},
        "puppets": [{"appearance": app.to_json(), "voice": voice.to_json()}
                    for app, voice in zip(scene.appearances, scene.voices)],
        "background": scene.background.to_json(),
    }


def write_clip(scene: Scene, folder: str | Path, name: str | None = None) -> Path:
    """Writes the clip folder (layout in the module docstring); meta.json last. Returns its path."""
    folder = Path(folder)
    name = name or folder.name
    folder.mkdir(parents=True, exist_ok=True)
    meta = clip_meta(scene, name)
    write_video(folder / "video.mp4", scene.frames, scene.fps, audio=scene.mix, sample_rate=scene.sample_rate,
                crf=VIDEO_CRF)
    with atomic_write(folder / "reference.png") as tmp:
        Image.fromarray(scene.reference).save(tmp, format="PNG")
    for i, track in enumerate(scene.tracks):
        write_wav(folder / f"audio_{i}.wav", track, scene.sample_rate)
    with atomic_write(folder / "ground_truth.npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **scene.ground_truth)
    sidecar = {"caption": scene.caption, "audio": [f"audio_{i}.wav" for i in range(len(scene.tracks))],
               "speaking": meta["speaking_intervals"], "boxes": meta["face_boxes"]}
    write_json_atomic(folder / "video.json", sidecar, indent=None)
    return write_json_atomic(folder / "meta.json", meta)


def clip_seed(seed: int, persons: int, index: int) -> int:
    """The scene seed of clip `index` of a `make` run: independent streams per (seed, persons, index)."""
    # 53 bits: exact as a JSON number in every language (JavaScript's doubles included).
    return int(np.random.SeedSequence([seed, persons, index]).generate_state(1, np.uint64)[0] >> 11)


def clip_name(seed: int, persons: int, index: int) -> str:
    return f"p{persons}_s{seed}_{index:05d}"


def load_clip(folder: str | Path) -> tuple[dict, dict]:
    """(meta, ground-truth arrays) of a clip folder."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / meta["files"]["ground_truth"]) as data:
        arrays = {k: data[k] for k in data.files}
    return meta, arrays
