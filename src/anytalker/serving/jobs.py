"""What a video request holds, checked, and how a stored request becomes the runner's objects.

The API checks a request's `settings` JSON and `boxes` here before it saves any file; the
stored request (JSON in the job store) holds the normalised values, and the worker rebuilds
the same `GenerationTask` and settings from it with `plan()`. Every rule about values lives in
`anytalker.pipeline.settings` (and `runner.prepare` for the inputs); this module only maps
JSON onto those objects, naming each field as a client spells it (`settings.steps`).
"""

from __future__ import annotations

import json
import math
import numbers
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from ..audio.alignment import ALIGN_MODES
from ..pipeline import runner
from ..pipeline.settings import InputSettings, ModelSettings, SamplingSettings, SettingsError, parse_size
from ..pipeline.tasks import GenerationTask

# The keys a request's settings may hold, and the kind of JSON value each takes.
# InputSettings' detectors and separator are left out: they name files on the server.
SAMPLING_KEYS = {"steps": "int", "guidance_scale": "number", "audio_guidance_scale": "number", "seed": "int",
                 "size": "size", "area": "int", "fps": "int", "max_frames_per_window": "int", "motion_frames": "int",
                 "negative_prompt": "text"}
INPUT_KEYS = {"order": "text", "loudness_lufs": "number"}
TASK_KEYS = {"audio_mode": "text", "offsets": "numbers"}  # GenerationTask.audio_mode, offsets_s
SETTINGS_KEYS = {**SAMPLING_KEYS, **INPUT_KEYS, **TASK_KEYS}
KINDS = {"int": "a whole number", "number": "a number", "text": "a string", "numbers": "a list of numbers",
         "size": '[height, width] or "HxW" in pixels'}
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")
# One `runner.prepare` at a time in this process (request threads and workers): the face
# detectors keep native state that concurrent threads corrupt (measured: 6 requests detecting
# faces at once crashed the server with SIGSEGV about one run in four).
_PREPARE = threading.Lock()


def label(name: str) -> str:
    """How a client names a settings field in messages: `settings.max_frames_per_window`."""
    return f"settings.{name}"


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _value(name: str, kind: str, value):
    """`value` of settings key `name` checked against its kind, JSON-safe (a size becomes [h, w])."""
    if kind == "size":
        if isinstance(value, str):
            return list(parse_size(value, label(name)))
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                               for v in value):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "number":
        if _is_number(value):
            return value
    elif kind == "text":
        if isinstance(value, str):
            return value
    elif isinstance(value, list) and all(_is_number(v) for v in value):  # numbers
        return value
    raise SettingsError(name, f"{label(name)} must be {KINDS[kind]}, got {json.dumps(value)}")


def parse_settings(text: str | None) -> dict:
    """The `settings` form field (a JSON object) -> the settings it sets, checked by kind and
    normalised. null values mean "the default" and are dropped."""
    if text is None or not text.strip():
        return {}
    try:
        given = json.loads(text)
    except json.JSONDecodeError as problem:
        raise SettingsError("settings", f"settings is not valid JSON ({problem})") from None
    if not isinstance(given, dict):
        raise SettingsError("settings", f'settings must be a JSON object such as {{"steps": 20}}, got {text.strip()!r}')
    unknown = sorted(set(given) - set(SETTINGS_KEYS))
    if unknown:
        raise SettingsError(unknown[0], f"unknown settings key{'s' if len(unknown) > 1 else ''} "
                                        f"{', '.join(map(repr, unknown))}; known keys: {', '.join(SETTINGS_KEYS)}")
    return {name: _value(name, SETTINGS_KEYS[name], value) for name, value in given.items() if value is not None}


def parse_boxes(text: str | None, tracks: int) -> list[list[float]] | None:
    """The `boxes` form field: a JSON list of [x0, y0, x1, y1] in image pixels, one per audio track
    (`runner.prepare` checks that each lies inside the image)."""
    if text is None or not text.strip():
        return None
    try:
        boxes = json.loads(text)
    except json.JSONDecodeError as problem:
        raise SettingsError("boxes", f"boxes is not valid JSON ({problem})") from None
    if not isinstance(boxes, list) or not boxes:
        raise SettingsError("boxes", f"boxes must be a list of [x0, y0, x1, y1] face boxes, got {text.strip()!r}")
    for index, box in enumerate(boxes):
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise SettingsError("boxes", f"boxes[{index}] must be [x0, y0, x1, y1] (4 numbers, image pixels), "
                                         f"got {json.dumps(box)}")
    if len(boxes) != tracks:
        raise SettingsError("boxes", f"{len(boxes)} boxes for {tracks} audio tracks: give one box per audio track, "
                                     "in track order")
    return boxes


@dataclass(frozen=True)
class JobPlan:
    """What the runner needs for one job."""

    task: GenerationTask
    sampling: SamplingSettings  # the model's defaults filled in
    inputs: InputSettings


def sampling_settings(settings: dict, model: ModelSettings) -> SamplingSettings:
    values = {k: v for k, v in settings.items() if k in SAMPLING_KEYS}
    if "size" in values:
        values["size"] = tuple(values["size"])
    sampling = SamplingSettings(**values).validate(label)
    return sampling.with_defaults(**runner.model_defaults(model)).validate(label)


def plan(request: dict, folder: Path, model: ModelSettings) -> JobPlan:
    """A stored request (`request()`) with its files in `folder` -> the runner's objects, validated
    (SettingsError names the field)."""
    settings = request["settings"]
    audio_mode = settings.get("audio_mode", "pad")
    if audio_mode not in ALIGN_MODES:
        raise SettingsError("audio_mode", f"{label('audio_mode')} {audio_mode!r}: choose from {', '.join(ALIGN_MODES)}")
    inputs = InputSettings(**{k: v for k, v in settings.items() if k in INPUT_KEYS}).validate(label)
    boxes = request.get("boxes")
    task = GenerationTask(
        name=request["id"], image=str(folder / request["image"]), audio=[str(folder / a) for a in request["audio"]],
        prompt=request.get("prompt", ""), bboxes=[",".join(str(v) for v in box) for box in boxes] if boxes else None,
        audio_mode=audio_mode, offsets_s=settings.get("offsets"))
    return JobPlan(task, sampling_settings(settings, model), inputs)


def prepare(todo: JobPlan) -> runner.PreparedTask:
    """`runner.prepare` of a job's task: its files checked, faces found, tracks aligned."""
    with _PREPARE:
        return runner.prepare(todo.task, todo.inputs)


def file_name(stem: str, client_name: str | None) -> str:
    """The name an upload is saved under: `stem` plus the client's suffix when it is a plain one
    (decoders sniff the content; the suffix only helps people reading the folder)."""
    suffix = Path(client_name or "").suffix
    return stem + (suffix.lower() if _SUFFIX.fullmatch(suffix) else "")


def request(job_id: str, image: str, audio: list[str], uploaded_as: dict, prompt: str,
            boxes: list | None, settings: dict) -> dict:
    """The JSON a job stores: its saved file names (and the clients' names for them), prompt,
    boxes and settings as checked by `parse_boxes` / `parse_settings`."""
    return {"id": job_id, "image": image, "audio": audio, "uploaded_as": uploaded_as, "prompt": prompt,
            "boxes": boxes, "settings": settings}
