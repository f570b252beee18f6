"""Generation jobs from user inputs: batch files, validation, face and audio preparation, writing.

Everything a user can get wrong is checked in `prepare_task`, before any model is loaded:
unreadable or silent audio, a missing image, a bad box, more tracks than faces.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..audio.alignment import AlignedTracks, align_tracks
from ..audio.io import load_audio, normalize_loudness
from ..faces.detection import FaceBox, detect_faces, load_image, parse_bbox, select_faces, square_box
from ..utils.atomic import write_json_atomic

FEATURE_RATE = 16000  # wav2vec2
OUTPUT_AUDIO_RATE = 48000  # the mp4's AAC track keeps the user's audio quality
MIN_IMAGE_SIDE = 32


@dataclass
class GenerationTask:
    """One video to make; paths are absolute or relative to the batch file's folder."""

    name: str
    image: str
    audio: list[str]
    prompt: str = ""
    bboxes: list[str] | None = None  # "x0,y0,x1,y1" per person, track order
    audio_mode: str = "pad"  # pad | concat (alias add)
    offsets_s: list[float] | None = None  # concat mode: each turn's start


@dataclass
class PreparedTask:
    task: GenerationTask
    image: np.ndarray  # uint8 [H, W, 3]
    boxes: list[FaceBox]  # square, track order
    features_audio: AlignedTracks  # 16 kHz, for wav2vec2
    output_audio: AlignedTracks  # 48 kHz, for the mp4
    faces_from: str  # detector name or "user"
    notes: list[str] = field(default_factory=list)


def _resolve(path: str, base: Path) -> str:
    return str(path) if os.path.isabs(path) else str(base / path)


def read_batch_file(path: str | os.PathLike, use_enhanced_caption: bool = False) -> list[GenerationTask]:
    """Tasks from the release's batch JSON or a MultiTalk-style JSON (one object or a list).

    Release: {task: {image_path, caption, enhance_caption, audio_list: [left..right]}}.
    MultiTalk: {prompt, cond_image, cond_audio: {person1: wav, ...}, audio_type: add|para,
    bbox: {person1: [x0, y0, x1, y1], ...}}; bbox is in pixels of cond_image, x (column) before y
    (row), exclusive ends, in the same person order as cond_audio.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"batch file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"batch file {path} is not valid JSON: {error}") from None
    base = path.parent
    if isinstance(data, dict) and "cond_image" in data:
        data = [data]
    tasks = []
    if isinstance(data, list):  # MultiTalk style
        for index, item in enumerate(data):
            where = f"{path.name}[{index}]"
            if not isinstance(item, dict) or "cond_image" not in item or not isinstance(item.get("cond_audio"), dict):
                raise ValueError(f"{where}: expected an object with cond_image and cond_audio {{person1: ...}}")
            persons = sorted(item["cond_audio"], key=lambda key: (len(key), key))  # person1 < person2 < person10
            bboxes = None
            if item.get("bbox"):
                if sorted(item["bbox"]) != sorted(persons):
                    raise ValueError(f"{where}: bbox persons {sorted(item['bbox'])} differ from cond_audio {persons}")
                bboxes = []
                for person in persons:
                    box = item["bbox"][person]
                    if not isinstance(box, (list, tuple)) or len(box) != 4:
                        raise ValueError(f"{where}: bbox of {person} must be [x0, y0, x1, y1], got {box!r}")
                    bboxes.append(",".join(str(v) for v in box))
            audio_type = item.get("audio_type", "para")
            tasks.append(GenerationTask(
                name=item.get("name", f"{path.stem}-{index}"), image=_resolve(item["cond_image"], base),
                audio=[_resolve(item["cond_audio"][p], base) for p in persons], prompt=item.get("prompt", ""),
                bboxes=bboxes, audio_mode="concat" if audio_type == "add" else "pad"))
    elif isinstance(data, dict):  # release style
        for name, item in data.items():
            if not isinstance(item, dict) or "image_path" not in item or not item.get("audio_list"):
                raise ValueError(f"{path.name}: task {name!r} needs image_path and a non-empty audio_list")
            caption = item.get("enhance_caption") if use_enhanced_caption and item.get("enhance_caption") \
                else item.get("caption", "")
            tasks.append(GenerationTask(name=name, image=_resolve(item["image_path"], base),
                                        audio=[_resolve(a, base) for a in item["audio_list"]], prompt=caption))
    else:
        raise ValueError(f"{path.name}: not a release batch ({{task: {{...}}}}) nor a MultiTalk job")
    if not tasks:
        raise ValueError(f"{path.name} holds no tasks")
    return tasks


def prepare_task(task: GenerationTask, order: str = "left-to-right", loudness_lufs: float | None = None,
                 detectors=None, separator=None) -> PreparedTask:
    """Loads and checks every input of a task; raises a specific error before any model work.

    `separator` (an `anytalker.audio.separation.VocalSeparator`) cleans the tracks the model
    listens to; the video's soundtrack keeps the original audio.
    """
    if not Path(task.image).is_file():
        raise FileNotFoundError(f"image not found: {task.image}")
    try:
        image = load_image(task.image)
    except OSError as error:  # PIL's UnidentifiedImageError (not an image) and truncated files
        raise ValueError(f"not a readable image: {task.image} ({error})") from None
    height, width = image.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ValueError(f"image {task.image} is {width}x{height}; at least {MIN_IMAGE_SIDE} px per side is needed")
    if not task.audio:
        raise ValueError("no audio track given: pass one --audio per person")

    def tracks(rate, separate=None):
        waves = [load_audio(path, rate) for path in task.audio]
        if separate is not None:
            waves = [separate(wave, rate) for wave in waves]
        if loudness_lufs is not None:
            waves = [normalize_loudness(wave, rate, loudness_lufs) for wave in waves]
        return align_tracks(waves, task.audio_mode, offsets_s=task.offsets_s, sample_rate=rate)

    features_audio = tracks(FEATURE_RATE, separator)  # the first load validates every file
    output_audio = tracks(OUTPUT_AUDIO_RATE)

    n = len(task.audio)
    if task.bboxes:
        if len(task.bboxes) != n:
            raise ValueError(f"{len(task.bboxes)} boxes for {n} audio tracks: give one --bbox per track, in track order")
        boxes, source = [parse_bbox(text, (height, width)) for text in task.bboxes], "user"
    else:
        kwargs = {} if detectors is None else {"detectors": detectors}
        detection = detect_faces(image, max_faces=n, **kwargs)
        boxes, source = select_faces(detection, n, order, image_name=task.image), detection.detector
    boxes = [square_box(box, (height, width)) for box in boxes]
    return PreparedTask(task, image, boxes, features_audio, output_audio, source)


def write_result(out_path: str | os.PathLike, frames: np.ndarray, fps: int, prepared: PreparedTask,
                 info: dict) -> Path:
    """The mp4 (H.264 + AAC of the mixed tracks) and its JSON sidecar, both written atomically."""
    from ..video.io import write_video

    out_path = Path(out_path)
    mixed = prepared.output_audio.mix()
    write_video(out_path, frames, fps, audio=mixed, sample_rate=OUTPUT_AUDIO_RATE)
    sidecar = {
        "task": asdict(prepared.task),
        "faces": {"source": prepared.faces_from, "boxes": [list(box.as_tuple()) for box in prepared.boxes]},
        "audio": {"mode": prepared.features_audio.mode, "duration_s": prepared.features_audio.duration,
                  "placements_s": [list(p) for p in prepared.features_audio.placements]},
        **info,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(out_path.with_suffix(".json"), sidecar, indent=2, ensure_ascii=False)
    return out_path
