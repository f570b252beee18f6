"""Which audio track drives which face: the app's pure logic, testable without a browser.

Faces are numbered #1..#N in the order rule (left-to-right or top-to-bottom) or, once the user
edits the box text, in the order of its lines. The page shows one audio slot per face; slot i
drives face #i until the user picks another face for it (`reassign` swaps, so two slots never
share a face). `bind` turns slots + faces into the tracks and boxes a `GenerationTask` takes (in
track order; the boxes are passed as user boxes, so the runner does not detect again), with a
message naming the slot or face for everything that can be wrong. `draw` labels every box with
its number and the slot and file that drive it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..faces.detection import ORDERS, FaceBox, detect_faces, load_image, parse_bbox, select_faces
from ..pipeline.tasks import GenerationTask

MAX_SLOTS = 10  # audio slots the page creates; faces beyond it (the smallest) are dropped
FACE_CHOICE = "face #{}"
NO_FACE = "no face"
# Box outline colours by face number (cycled): distinct on photos and on the puppets' walls.
COLOURS = ((230, 57, 70), (29, 120, 230), (42, 170, 80), (240, 160, 20), (150, 70, 200), (0, 170, 190),
           (220, 80, 160), (120, 120, 120))
MIN_DRAWN_SIDE = 512  # images with a shorter side (the 64 px puppets) are enlarged to it for drawing


class BindingError(ValueError):
    """Slots and faces that cannot make a task: the message says what to change on the page."""


@dataclass(frozen=True)
class FaceSet:
    """The faces of one image, numbered by position in `boxes` (#1 first)."""

    boxes: tuple[FaceBox, ...]
    source: str  # the detector that found them, "user" (box text) or "example"
    summary: str = ""  # what each detector found

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass(frozen=True)
class Binding:
    """Tracks in slot order and the face each one drives."""

    tracks: tuple[str, ...]
    faces: tuple[int, ...]  # face index (0-based) per track
    boxes: tuple[FaceBox, ...]  # the box of each track's face


# ----------------------------------------------------------------------------------------------
# Faces
# ----------------------------------------------------------------------------------------------

def order_boxes(boxes: Sequence[FaceBox], order: str = "left-to-right") -> list[FaceBox]:
    """The boxes numbered by the order rule (all of them kept)."""
    return select_faces(list(boxes), len(boxes), order) if boxes else []


def detect(image, order: str = "left-to-right", detectors: Sequence[str] | None = None,
           max_faces: int = MAX_SLOTS) -> FaceSet:
    """Every face the detector chain finds (the first detector that finds any), at most
    `max_faces` (the largest), numbered by `order`."""
    if order not in ORDERS:
        raise BindingError(f"order {order!r}: choose from {', '.join(ORDERS)}")
    kwargs = {} if detectors is None else {"detectors": tuple(detectors)}
    detection = detect_faces(load_image(image), **kwargs)
    boxes = order_boxes(detection.boxes[:max_faces], order)  # detection.boxes: largest first
    summary = detection.summary()
    if len(detection.boxes) > max_faces:
        summary += f"; kept the {max_faces} largest of {len(detection.boxes)}"
    return FaceSet(tuple(boxes), detection.detector if boxes else "none", summary)


def parse_boxes(text: str, image_hw: tuple[int, int] | None = None) -> list[FaceBox]:
    """Box text, one "x0,y0,x1,y1" per line (commas or spaces), face #k on the k-th non-empty line."""
    boxes = []
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(lines) > MAX_SLOTS:
        raise BindingError(f"{len(lines)} boxes: the page binds at most {MAX_SLOTS} faces")
    for number, line in enumerate(lines, 1):
        try:
            boxes.append(parse_bbox(",".join(re.split(r"[,\s]+", line.strip(" ,"))), image_hw))
        except ValueError as error:
            raise BindingError(f"box line {number} (face #{number}): {error}") from None
    return boxes


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def format_box(box: FaceBox) -> str:
    return ",".join(_number(v) for v in box.as_tuple())


def format_boxes(boxes: Sequence[FaceBox]) -> str:
    return "\n".join(format_box(box) for box in boxes)


# ----------------------------------------------------------------------------------------------
# Slots
# ----------------------------------------------------------------------------------------------

def face_choice(index: int | None) -> str:
    """Face index (0-based) -> the dropdown's "face #k" (NO_FACE for None)."""
    return NO_FACE if index is None else FACE_CHOICE.format(index + 1)


def face_index(choice: str | None) -> int | None:
    """The dropdown's "face #k" -> face index k-1 (None for NO_FACE or nothing)."""
    match = re.fullmatch(r"face #(\d+)", choice or "")
    return int(match.group(1)) - 1 if match else None


def slot_count(num_faces: int, tracks: Sequence[str | None] = ()) -> int:
    """Slots to show: one per face, and every slot that holds a track (so none hides a file)."""
    filled = [i + 1 for i, track in enumerate(tracks) if track]
    return min(max([num_faces, *filled]), MAX_SLOTS)


def default_assignment(num_slots: int, num_faces: int) -> list[int | None]:
    """Slot i drives face #i+1; slots beyond the faces drive none."""
    return [i if i < num_faces else None for i in range(num_slots)]


def valid_assignment(assignment: Sequence[int | None], num_slots: int, num_faces: int) -> list[int | None]:
    """`assignment` kept while its first `num_faces` slots still drive every face once, else the default."""
    head = list(assignment[:num_faces])
    if sorted(face for face in head if face is not None) == list(range(num_faces)):
        return head + [None] * (num_slots - num_faces)
    return default_assignment(num_slots, num_faces)


def reassign(assignment: Sequence[int | None], slot: int, face: int | None) -> list[int | None]:
    """Slot `slot` drives `face`; a slot that drove it takes over `slot`'s old face (a swap)."""
    new = list(assignment)
    previous = new[slot]
    for other, current in enumerate(new):
        if other != slot and face is not None and current == face:
            new[other] = previous
    new[slot] = face
    return new


def bind(faces: Sequence[FaceBox], tracks: Sequence[str | None], assignment: Sequence[int | None]) -> Binding:
    """Slots (a track or None each, and the face each drives) -> the task's tracks and boxes.

    Every face needs a track and every track a face of its own; the errors say which slot."""
    filled = [slot for slot, track in enumerate(tracks) if track]
    if not faces:
        raise BindingError("no face in the image: enter a box x0,y0,x1,y1 per face by hand (one per line), "
                           "or upload an image with visible faces")
    if not filled:
        raise BindingError(f"no audio track: upload one per face ({len(faces)} face{'s' if len(faces) > 1 else ''})")
    if len(filled) > len(faces):
        raise BindingError(f"{len(filled)} audio tracks but {len(faces)} face{'s' if len(faces) > 1 else ''}: "
                           "remove a track, or add a box x0,y0,x1,y1 for each extra person")
    assignment = list(assignment) + [None] * (len(tracks) - len(assignment))
    for slot in range(len(faces)):
        if slot >= len(tracks) or not tracks[slot]:
            face = assignment[slot] if slot < len(assignment) else slot
            raise BindingError(f"audio slot {slot + 1} ({face_choice(face)}) has no track: upload one, or delete "
                               "that face's box line to leave it out")
    owners: dict[int, int] = {}
    for slot in filled:
        face = assignment[slot]
        if face is None or not 0 <= face < len(faces):
            raise BindingError(f"audio slot {slot + 1} drives no face: pick one of face #1..#{len(faces)}")
        if face in owners:
            raise BindingError(f"audio slots {owners[face] + 1} and {slot + 1} both drive {face_choice(face)}: "
                               "give each track its own face")
        owners[face] = slot
    return Binding(tuple(tracks[s] for s in filled), tuple(assignment[s] for s in filled),
                   tuple(faces[assignment[s]] for s in filled))


def parse_offsets(text: str | None) -> list[float] | None:
    """Concat mode's turn starts, "0, 2.5" -> [0.0, 2.5] (None when empty)."""
    if not text or not text.strip():
        return None
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise BindingError(f"offsets {text!r}: expected seconds separated by commas, e.g. 0, 2.5") from None


def to_task(name: str, image: str, binding: Binding, prompt: str = "", audio_mode: str = "pad",
            offsets_s: list[float] | None = None) -> GenerationTask:
    """The GenerationTask of a binding: tracks in slot order, each with its face's box."""
    return GenerationTask(name, image, list(binding.tracks), prompt, [format_box(b) for b in binding.boxes],
                          audio_mode, offsets_s)


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------

def face_labels(num_faces: int, tracks: Sequence[str | None], assignment: Sequence[int | None]) -> list[str]:
    """Per face: "#k <- slot s: file.wav", or "#k: no track"."""
    labels = []
    for face in range(num_faces):
        drivers = [f"slot {slot + 1}: {os.path.basename(tracks[slot]) if slot < len(tracks) and tracks[slot] else '(empty)'}"
                   for slot, owner in enumerate(assignment) if owner == face]
        labels.append(f"#{face + 1} <- " + ", ".join(drivers) if drivers else f"#{face + 1}: no track")
    return labels


def draw(image, boxes: Sequence[FaceBox], labels: Sequence[str] | None = None) -> np.ndarray:
    """The image with every box outlined and labelled (default label: its number); uint8 RGB."""
    from PIL import Image, ImageDraw, ImageFont

    rgb = load_image(image)
    scale = min(max(1, -(-MIN_DRAWN_SIDE // min(rgb.shape[:2]))), 16)  # integer enlargement of tiny images
    picture = Image.fromarray(rgb)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    canvas = ImageDraw.Draw(picture)
    side = min(picture.size)
    font = ImageFont.load_default(size=max(12, side // 24))
    line = max(2, side // 200)
    for index, box in enumerate(boxes):
        colour = COLOURS[index % len(COLOURS)]
        x0, y0, x1, y1 = (v * scale for v in box.as_tuple())
        canvas.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=line)
        text = labels[index] if labels is not None else f"#{index + 1}"
        left, top, right, bottom = canvas.textbbox((0, 0), text, font=font)
        pad = max(2, line)
        width, height = right - left + 2 * pad, bottom - top + 2 * pad
        tx = min(max(x0, 0), max(picture.width - width, 0))
        ty = y0 - height if y0 - height >= 0 else min(y1, picture.height - height)
        canvas.rectangle((tx, ty, tx + width, ty + height), fill=colour)
        canvas.text((tx + pad - left, ty + pad - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(picture)
