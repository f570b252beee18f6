"""Generation jobs from user inputs: batch files, validation, face and audio preparation, writing.

Everything a user can get wrong is checked in `prepare_task`, before any model is loaded:
unreadable or silent audio, a missing image, a bad box or region, more tracks than faces.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..audio.alignment import AlignedTracks, align_tracks
from ..audio.io import SAMPLE_RATE, load_audio, normalize_loudness
from ..faces.detection import (FaceBox, FaceCountError, detect_faces, detect_faces_in_region, load_image, parse_bbox,
                               select_faces, square_box)
from ..utils.atomic import write_json_atomic

OUTPUT_AUDIO_RATE = 48000  # the mp4's AAC track keeps the user's audio quality
MIN_IMAGE_SIDE = 32
MULTITALK_AUDIO_TYPES = {"add": "concat", "para": "pad"}  # add: turns one after another; para: together
REGION_FORMAT = "[row0, col0, row1, col1]"  # MultiTalk's bbox: rows (y) first, exclusive ends


@dataclass
class GenerationTask:
    """One video to make. Paths are absolute, or relative to the current directory when used.

    `bboxes` are face boxes "x0,y0,x1,y1" (x first; the CLI's --bbox). `regions` are person
    regions as MultiTalk jobs give them, [row0, col0, row1, col1] in image pixels (rows first,
    exclusive ends), often a whole upper body: the face is detected inside each. Both are in track
    order; give one or the other (or neither: faces are detected and bound in `order`).
    """

    name: str
    image: str
    audio: list[str]
    prompt: str = ""
    bboxes: list[str] | None = None  # "x0,y0,x1,y1" per person, track order
    audio_mode: str = "pad"  # pad | concat (alias add)
    offsets_s: list[float] | None = None  # concat mode: each turn's start
    regions: list[list[float]] | None = None  # [row0, col0, row1, col1] per person, track order
    persons: list[str] | None = None  # the job's person names (person1, ...), track order; for messages


@dataclass
class PreparedTask:
    task: GenerationTask
    image: np.ndarray  # uint8 [H, W, 3]
    boxes: list[FaceBox]  # square, track order
    features_audio: AlignedTracks  # 16 kHz, for wav2vec2
    output_audio: AlignedTracks  # 48 kHz, for the mp4
    faces_from: str  # detector name(s) or "user"
    notes: list[str] = field(default_factory=list)
    regions: list[FaceBox] | None = None  # the persons' regions as x-first boxes, when the task gave regions
    detected: list[FaceBox] | None = None  # the face found in each region, before squaring


def _resolve(path: str, base: Path) -> str:
    return str(path) if os.path.isabs(path) else str(base / path)


def _resolve_multitalk(value, json_dir: Path, what: str, problems: list[str]) -> str:
    """A MultiTalk path: absolute, else relative to the current directory (MultiTalk's repo root,
    where its users run from), else to the job file's folder. Always returned absolute."""
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{what}: expected a file path, got {value!r}")
        return str(value)
    path = os.path.expanduser(value)
    if os.path.isabs(path):
        return path
    candidates = [os.path.abspath(path), str(json_dir / path)]
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    problems.append(f"{what} {value!r} not found: neither {candidates[0]} (current directory) "
                    f"nor {candidates[1]} (the job file's folder) exists")
    return candidates[0]


def _person(task: GenerationTask, index: int) -> str:
    return task.persons[index] if task.persons and index < len(task.persons) else f"person {index + 1}"


def _format_region(values) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def region_box(values, label: str, image_hw: tuple[int, int] | None = None,
               image_name: str = "the image") -> FaceBox:
    """A MultiTalk region [row0, col0, row1, col1] -> an x-first FaceBox (col0, row0, col1, row1).

    Checks 4 finite numbers, a non-empty extent, and (with `image_hw` = (height, width)) that it
    lies inside the image, with a message that names `label` (e.g. "person2's bbox").
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or len(values) != 4:
        raise ValueError(f"{label} must be 4 numbers {REGION_FORMAT} (MultiTalk's bbox, rows first), got {values!r}")
    for name, value in zip(("row0", "col0", "row1", "col1"), values):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{label} {_format_region(values)}: {name} = {value!r} is not a number")
        if not math.isfinite(value):
            raise ValueError(f"{label} {_format_region(values)}: {name} = {value!r} is not a finite number")
    row0, col0, row1, col1 = values
    shown = f"{label} {REGION_FORMAT} = {_format_region(values)}"
    if row1 <= row0:
        raise ValueError(f"{shown} is empty: row1 ({row1}) must be greater than row0 ({row0})")
    if col1 <= col0:
        raise ValueError(f"{shown} is empty: col1 ({col1}) must be greater than col0 ({col0})")
    if row0 < 0 or col0 < 0:
        raise ValueError(f"{shown} is outside the image: coordinates must be >= 0")
    if image_hw is not None:
        height, width = image_hw
        if row1 > height or col1 > width:
            hint = ""
            if col1 <= height and row1 <= width:  # read x first, it would fit
                hint = (f"; it would fit read as [x0, y0, x1, y1]: MultiTalk's bbox lists rows (y) first, "
                        f"write it as {_format_region([col0, row0, col1, row1])}")
            raise ValueError(f"{shown} (rows {row0}..{row1}, columns {col0}..{col1}) reaches outside "
                             f"{image_name}, {width}x{height} (width x height){hint}")
    return FaceBox(col0, row0, col1, row1, score=None, detector="region")


def _iou(a: FaceBox, b: FaceBox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    inter = max(w, 0) * max(h, 0)
    return inter / (a.area + b.area - inter)


def read_batch_file(path: str | os.PathLike, use_enhanced_caption: bool = False) -> list[GenerationTask]:
    """Tasks from the release's batch JSON or a MultiTalk-style JSON (one object or a list).

    Release: {task: {image_path, caption, enhance_caption, audio_list: [left..right]}}; relative
    paths are relative to the batch file's folder.
    MultiTalk: {prompt, cond_image, cond_audio: {person1: wav, ...}, audio_type: add|para,
    bbox: {person1: [row0, col0, row1, col1], ...}}, read as MultiTalk's code reads it: relative
    paths are relative to the current directory (MultiTalk's repo root), else to the job file's
    folder; "add" plays the turns one after another (audio_mode concat), "para" together (pad, the
    default); bbox is each person's region (rows first, exclusive ends, cond_image pixels; its face
    is detected inside), in the person order of cond_audio. Every path comes back absolute.
    """
    path = Path(os.path.abspath(path))
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
        missing = []
        for index, item in enumerate(data):
            where = f"{path.name}[{index}]"
            if not isinstance(item, dict) or "cond_image" not in item or not isinstance(item.get("cond_audio"), dict):
                raise ValueError(f"{where}: expected an object with cond_image and cond_audio {{person1: ...}}")
            if not item["cond_audio"]:
                raise ValueError(f"{where}: cond_audio is empty: give one track per person {{person1: wav, ...}}")
            persons = sorted(item["cond_audio"], key=lambda key: (len(key), key))  # person1 < person2 < person10
            regions = None
            if item.get("bbox"):
                if not isinstance(item["bbox"], dict):
                    raise ValueError(f"{where}: bbox must map persons to {REGION_FORMAT}, got {item['bbox']!r}")
                if sorted(item["bbox"]) != sorted(persons):
                    raise ValueError(f"{where}: bbox persons {sorted(item['bbox'])} differ from cond_audio {persons}")
                regions = []
                for person in persons:
                    region_box(item["bbox"][person], f"{where}: bbox of {person}")
                    regions.append(list(item["bbox"][person]))
            audio_type = item.get("audio_type", "para")
            if audio_type not in MULTITALK_AUDIO_TYPES:
                raise ValueError(f"{where}: audio_type must be 'add' (turns one after another) or 'para' "
                                 f"(everyone's track together), got {audio_type!r}")
            tasks.append(GenerationTask(
                name=item.get("name", f"{path.stem}-{index}"),
                image=_resolve_multitalk(item["cond_image"], base, f"{where}: cond_image", missing),
                audio=[_resolve_multitalk(item["cond_audio"][p], base, f"{where}: cond_audio {p}", missing)
                       for p in persons],
                prompt=item.get("prompt", ""), audio_mode=MULTITALK_AUDIO_TYPES[audio_type], regions=regions,
                persons=persons))
        if missing:
            raise FileNotFoundError("\n       ".join(missing))
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
    listens to; the video's soundtrack keeps the original audio. With `task.regions`, each
    person's face is the largest one found inside their region (`detect_faces_in_region`).
    """
    if not Path(task.image).is_file():
        raise FileNotFoundError(f"image not found: {task.image}")
    try:
        image = load_image(task.image)
    except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError (not an image), truncated files, odd modes
        raise ValueError(f"not a readable image: {task.image} ({error})") from None
    height, width = image.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ValueError(f"image {task.image} is {width}x{height}; at least {MIN_IMAGE_SIDE} px per side is needed")
    if not task.audio:
        raise ValueError("no audio track given: pass one --audio per person")
    n = len(task.audio)
    regions = None
    if task.regions is not None:
        if task.bboxes:
            raise ValueError("give face boxes (bboxes, x0,y0,x1,y1) or person regions (MultiTalk bbox), not both")
        if len(task.regions) != n:
            raise ValueError(f"{len(task.regions)} person regions for {n} audio tracks: give one per track")
        regions = [region_box(values, f"{_person(task, i)}'s bbox", (height, width), f"image {task.image}")
                   for i, values in enumerate(task.regions)]

    def tracks(rate, separate=None):
        waves = [load_audio(path, rate) for path in task.audio]
        if separate is not None:
            waves = [separate(wave, rate) for wave in waves]
        if loudness_lufs is not None:
            waves = [normalize_loudness(wave, rate, loudness_lufs) for wave in waves]
        return align_tracks(waves, task.audio_mode, offsets_s=task.offsets_s, sample_rate=rate)

    features_audio = tracks(SAMPLE_RATE, separator)  # the first load validates every file
    output_audio = tracks(OUTPUT_AUDIO_RATE)

    kwargs = {} if detectors is None else {"detectors": detectors}
    detected = None
    if task.bboxes:
        if len(task.bboxes) != n:
            raise ValueError(f"{len(task.bboxes)} boxes for {n} audio tracks: give one --bbox per track, in track order")
        boxes, source = [parse_bbox(text, (height, width)) for text in task.bboxes], "user"
    elif regions is not None:
        detected = []
        for i, region in enumerate(regions):
            found = detect_faces_in_region(image, region, **kwargs)
            if not found.boxes:
                given = task.regions[i]
                hint = ""
                if given[3] <= height and given[2] <= width:  # read x first, it fits too
                    hint = (f"; MultiTalk's bbox lists rows (y) first: if this region was written as "
                            f"[x0, y0, x1, y1], write it as {_format_region([given[1], given[0], given[3], given[2]])}")
                raise FaceCountError(
                    f"no face found inside {_person(task, i)}'s region {REGION_FORMAT} = {_format_region(given)} "
                    f"(rows {given[0]}..{given[2]}, columns {given[1]}..{given[3]}) of image {task.image} "
                    f"({found.summary()}){hint}")
            detected.append(found.boxes[0])  # the largest face inside
        for i in range(n):
            for j in range(i + 1, n):
                if _iou(detected[i], detected[j]) > 0.5:
                    raise ValueError(
                        f"{_person(task, i)}'s and {_person(task, j)}'s regions both hold the same face "
                        f"{list(detected[i].as_tuple())} (x0, y0, x1, y1) as their largest in image {task.image}; "
                        f"make each {REGION_FORMAT} region hold its own person's face")
        boxes = detected
        source = ",".join(dict.fromkeys(box.detector for box in detected))
    else:
        detection = detect_faces(image, max_faces=n, **kwargs)
        boxes, source = select_faces(detection, n, order, image_name=task.image), detection.detector
    boxes = [square_box(box, (height, width)) for box in boxes]
    return PreparedTask(task, image, boxes, features_audio, output_audio, source, regions=regions, detected=detected)


def write_result(out_path: str | os.PathLike, frames: np.ndarray, fps: int, prepared: PreparedTask,
                 info: dict) -> Path:
    """The mp4 (H.264 + AAC of the mixed tracks) and its JSON sidecar, both written atomically."""
    from ..video.io import write_video

    out_path = Path(out_path)
    mixed = prepared.output_audio.mix()
    write_video(out_path, frames, fps, audio=mixed, sample_rate=OUTPUT_AUDIO_RATE)
    sidecar = {
        "task": asdict(prepared.task),
        "faces": _faces_record(prepared),
        "audio": {"mode": prepared.features_audio.mode, "duration_s": prepared.features_audio.duration,
                  "placements_s": [list(p) for p in prepared.features_audio.placements]},
        **info,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(out_path.with_suffix(".json"), sidecar, indent=2, ensure_ascii=False)
    return out_path


def _faces_record(prepared: PreparedTask) -> dict:
    """The sidecar's faces: the square boxes used (x0, y0, x1, y1, track order) and where they came from."""
    record = {"source": prepared.faces_from, "boxes": [list(box.as_tuple()) for box in prepared.boxes]}
    if prepared.regions is not None:
        record.update({
            "detected_boxes": [list(box.as_tuple()) for box in prepared.detected],  # before squaring
            "detectors": [box.detector for box in prepared.detected],
            "regions": [list(box.as_tuple()) for box in prepared.regions],
            "region_format": "regions as x0, y0, x1, y1 like boxes; from the job's MultiTalk bbox "
                             f"{REGION_FORMAT} (task.regions, as given)",
        })
    return record
