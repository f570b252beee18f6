"""`anytalker prepare SRC OUT`: talking clips -> training shards.

Input: a folder of mp4 clips (video + audio), searched recursively (so one folder per clip, as
`anytalker puppets make` writes, works too). Next to `clip.mp4` an optional `clip.json`:
    {"caption": str,
     "audio": ["clip.left.wav", ...],          per-person tracks, left to right (multi-person clips)
     "speaking": [[[start_s, end_s], ...], ...] per person (default: voice activity of each track)
     "boxes": [[x0, y0, x1, y1], ...]}          clip-wide face boxes in source pixels (default: detected)
A clip without "audio" is a single-person clip whose own soundtrack is that person's.

Each clip becomes samples of `frames` video frames at 24 fps, resized to the training size,
with per-person 16 kHz audio, face boxes, speaking intervals and caption; single-person samples
also get a face-centred half-width view for side-by-side pairing in stage 1. With `components`
(a pipeline's frozen encoders) the encodings are cached in the sample, so training need not
run them. Rejected clips are logged with the reason; a corrupt clip never aborts the run; a
re-run skips clips already written (shards are written atomically and logged when complete).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..audio.io import SAMPLE_RATE, SILENCE_PEAK, load_audio, resample
from ..faces.detection import FaceBox, detect_faces, select_faces, square_box
from ..utils.atomic import finished_files
from ..video.io import read_video
from .shards import Sample, write_shard

TRAIN_FPS = 24


class ClipRejected(Exception):
    """A clip that is skipped on purpose (reason in the message)."""


@dataclass
class PrepareSettings:
    frames: int = 25  # per sample, 4n+1
    height: int = 64
    width: int = 128
    detect_every: int = 6  # run the face detector on every n-th frame
    max_samples_per_clip: int | None = None
    detectors: tuple | None = None

    def __post_init__(self):
        if (self.frames - 1) % 4:
            raise ValueError(f"frames must be 4n+1, got {self.frames}")
        if self.height % 16 or self.width % 32:
            raise ValueError(f"size must be multiples of 16 (height) and 32 (width: halves stay multiples of 16), "
                             f"got {self.height}x{self.width}")


def _resample_frames(frames: np.ndarray, fps: float) -> np.ndarray:
    """Nearest source frame for every 1/24 s."""
    count = int(math.floor(len(frames) / fps * TRAIN_FPS + 1e-6))
    index = np.minimum(np.round(np.arange(count) * fps / TRAIN_FPS).astype(int), len(frames) - 1)
    return frames[index]


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    out = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def _scale_box(box: FaceBox, sx: float, sy: float, dx: float = 0.0, dy: float = 0.0) -> list[float]:
    return [(box.x0 - dx) * sx, (box.y0 - dy) * sy, (box.x1 - dx) * sx, (box.y1 - dy) * sy]


def _track_faces(frames: np.ndarray, count: int, every: int, detectors) -> list[FaceBox]:
    """Clip-wide box per person (the union over sampled frames), left to right."""
    kwargs = {} if detectors is None else {"detectors": detectors}
    per_frame = []
    for index in range(0, len(frames), every):
        detection = detect_faces(frames[index], max_faces=count, **kwargs)
        if len(detection.boxes) != count:
            reason = "face count wrong" if index == 0 else "faces lost"
            raise ClipRejected(f"{reason}: {len(detection.boxes)} faces at frame {index}, expected {count}")
        per_frame.append(select_faces(detection, count))
    return [FaceBox(min(b[i].x0 for b in per_frame), min(b[i].y0 for b in per_frame),
                    max(b[i].x1 for b in per_frame), max(b[i].y1 for b in per_frame), detector=per_frame[0][i].detector)
            for i in range(count)]


def _half_view(frames: np.ndarray, box: FaceBox, height: int, width: int) -> tuple[np.ndarray, list[float]]:
    """The largest crop of aspect height:(width/2) centred on the face, resized to (height, width/2)."""
    src_h, src_w = frames.shape[1:3]
    aspect = (width // 2) / height
    crop_h = min(src_h, src_w / aspect)
    crop_w = crop_h * aspect
    cx, cy = box.center
    x0 = min(max(cx - crop_w / 2, 0), src_w - crop_w)
    y0 = min(max(cy - crop_h / 2, 0), src_h - crop_h)
    crop = frames[:, int(round(y0)):int(round(y0 + crop_h)), int(round(x0)):int(round(x0 + crop_w))]
    scale = height / crop.shape[1]
    return _resize(crop, height, width // 2), _scale_box(box, scale, scale, round(x0), round(y0))


def prepare_clip(video_path: Path, settings: PrepareSettings, vad: Callable | None = None,
                 clip_id: str | None = None) -> list[Sample]:
    """One clip -> its samples, or ClipRejected with the reason. `clip_id` names its samples
    (default: the file name without extension)."""
    clip_id = clip_id or video_path.stem
    sidecar_path = video_path.with_suffix(".json")
    sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.is_file() else {}
    data = read_video(video_path)
    frames = _resample_frames(data.frames, data.fps)
    if len(frames) < settings.frames:
        raise ClipRejected(f"too short: {len(frames)} frames at 24 fps, need {settings.frames}")

    if sidecar.get("audio"):
        tracks = [load_audio(video_path.parent / path, SAMPLE_RATE, allow_silent=True) for path in sidecar["audio"]]
    else:
        if data.audio is None:
            raise ClipRejected("no audio stream and no per-person tracks")
        tracks = [resample(data.audio.mean(axis=0), data.sample_rate, SAMPLE_RATE)]
    if max(float(np.abs(t).max(initial=0.0)) for t in tracks) < SILENCE_PEAK:
        raise ClipRejected("silent audio")
    count = len(tracks)

    src_h, src_w = frames.shape[1:3]
    if sidecar.get("boxes"):
        if len(sidecar["boxes"]) != count:
            raise ClipRejected(f"face count wrong: {len(sidecar['boxes'])} boxes for {count} tracks")
        boxes = [FaceBox(*b, detector="sidecar") for b in sidecar["boxes"]]
    else:
        boxes = _track_faces(frames, count, settings.detect_every, settings.detectors)
    boxes = [square_box(box, (src_h, src_w)) for box in boxes]

    if "speaking" in sidecar:
        speaking = sidecar["speaking"]
    else:
        from ..audio.activity import speaking_intervals

        speaking = [(vad or speaking_intervals)(track, SAMPLE_RATE) for track in tracks]

    full = _resize(frames, settings.height, settings.width)
    sx, sy = settings.width / src_w, settings.height / src_h
    half, half_box = _half_view(frames, boxes[0], settings.height, settings.width) if count == 1 else (None, None)

    samples = []
    num = len(frames) // settings.frames
    if settings.max_samples_per_clip:
        num = min(num, settings.max_samples_per_clip)
    per_frame = SAMPLE_RATE / TRAIN_FPS
    for s in range(num):
        start, stop = s * settings.frames, (s + 1) * settings.frames
        t0, t1 = start / TRAIN_FPS, stop / TRAIN_FPS
        audio = []
        for track in tracks:
            piece = track[int(round(start * per_frame)):int(round(stop * per_frame))]
            audio.append(np.pad(piece, (0, int(round(settings.frames * per_frame)) - len(piece))))
        meta = {
            "source": clip_id, "segment": s, "fps": TRAIN_FPS, "frames": settings.frames,
            "height": settings.height, "width": settings.width, "caption": sidecar.get("caption", ""),
            "persons": [{"box": _scale_box(box, sx, sy),
                         "speaking": [[max(a - t0, 0.0), min(b - t0, t1 - t0)] for a, b in person_speaking
                                      if b > t0 and a < t1]}
                        for box, person_speaking in zip(boxes, speaking)],
        }
        if half is not None:
            meta["half_box"] = half_box
        samples.append(Sample(f"{clip_id}-{s:04d}", meta, full[start:stop], audio,
                              None if half is None else half[start:stop]))
    return samples


def prepare_dataset(src: str | os.PathLike, out: str | os.PathLike, settings: PrepareSettings,
                    shard_size: int = 64, encode: Callable[[Sample], dict] | None = None,
                    progress: bool = True) -> dict:
    """Runs `prepare_clip` over every mp4 of `src`, writing shards to `out`. Resumable."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "clips.jsonl"  # one line per finished clip: {"clip", "status", "reason"?, "samples"?}
    done = {json.loads(line)["clip"] for line in log_path.read_text().splitlines()} if log_path.is_file() else set()
    def clip_id(path: Path) -> str:  # unique across sub-folders, and a valid shard member prefix
        return path.relative_to(src).with_suffix("").as_posix().replace("/", "_").replace(".", "_")

    clips = [p for p in finished_files(src, "*.mp4") if clip_id(p) not in done]
    next_shard = len(list(out.glob("shard-*.tar")))
    pending, pending_log = [], []

    def flush():
        nonlocal next_shard, pending, pending_log
        if pending:
            write_shard(out / f"shard-{next_shard:05d}.tar", pending)
            next_shard += 1
        with open(log_path, "a") as log:  # logged only once their samples are safely on disk
            log.writelines(json.dumps(entry) + "\n" for entry in pending_log)
        pending, pending_log = [], []

    for clip in tqdm(clips, desc="prepare", unit="clip", disable=not progress):
        try:
            samples = prepare_clip(clip, settings, clip_id=clip_id(clip))
            if encode is not None:
                for sample in samples:
                    sample.cache = encode(sample)
            pending += samples
            pending_log.append({"clip": clip_id(clip), "status": "ok", "samples": len(samples)})
        except ClipRejected as reason:
            pending_log.append({"clip": clip_id(clip), "status": "rejected", "reason": str(reason)})
        except Exception as error:  # noqa: BLE001 - a corrupt clip is reported and skipped, never fatal
            pending_log.append({"clip": clip_id(clip), "status": "corrupt",
                                "reason": f"{type(error).__name__}: {error}"})
        if len(pending) >= shard_size:
            flush()
    flush()
    entries = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.is_file() else []
    summary = {"clips": len(entries), "ok": sum(e["status"] == "ok" for e in entries),
               "samples": sum(e.get("samples", 0) for e in entries), "shards": next_shard,
               "rejected": {}}
    for entry in entries:
        if entry["status"] != "ok":
            reason = entry["reason"].split(":")[0]
            summary["rejected"][reason] = summary["rejected"].get(reason, 0) + 1
    return summary
