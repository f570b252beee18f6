"""Face boxes: the box type, user-given boxes (`--bbox`) and the square boxes masks and crops use.

Boxes are (x0, y0, x1, y1) in pixels with exclusive ends: the box covers columns x0..x1-1 and
rows y0..y1-1.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace


def round_half_up(value: float) -> int:
    return math.floor(value + 0.5)  # Python's round() rounds halves to even


class DetectorUnavailable(RuntimeError):
    """A detector backend cannot run here (package or model file missing)."""


class FaceCountError(ValueError):
    """Fewer faces than audio tracks."""


@dataclass(frozen=True)
class FaceBox:
    """A face box in pixels, (x0, y0) inclusive and (x1, y1) exclusive; coordinates int or float."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float | None = None
    detector: str = "user"

    def __post_init__(self):
        for name in ("x0", "y0", "x1", "y1"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"face box {name} must be a finite number, got {value!r}")
            # Plain Python numbers: numpy scalars would leak into JSON sidecars and comparisons.
            object.__setattr__(self, name, int(value) if isinstance(value, numbers.Integral) else float(value))
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError(f"empty face box ({self.x0}, {self.y0}, {self.x1}, {self.y1}): "
                             "need x1 > x0 and y1 > y0")
        if self.score is not None:
            object.__setattr__(self, "score", float(self.score))

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def as_tuple(self) -> tuple[float, float, float, float]:
        return self.x0, self.y0, self.x1, self.y1

    def clip(self, image_hw: tuple[int, int]) -> FaceBox:
        """The part of the box inside an image of (height, width); ValueError if nothing is left."""
        height, width = image_hw
        return replace(self, x0=max(self.x0, 0), y0=max(self.y0, 0), x1=min(self.x1, width), y1=min(self.y1, height))


def parse_bbox(text: str, image_hw: tuple[int, int] | None = None) -> FaceBox:
    """A user box "x0,y0,x1,y1" (pixels, exclusive ends) -> FaceBox, with an error that says what is wrong.

    With `image_hw` = (height, width) the box must lie inside the image.
    """
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) != 4:
        raise ValueError(f"bbox {text!r}: expected 4 comma-separated numbers x0,y0,x1,y1, got {len(parts)}")
    values = []
    for name, part in zip(("x0", "y0", "x1", "y1"), parts):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"bbox {text!r}: {name} = {part!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"bbox {text!r}: {name} = {part!r} is not a finite number")
        values.append(int(value) if value.is_integer() else value)
    x0, y0, x1, y1 = values
    if x1 <= x0:
        raise ValueError(f"bbox {text!r}: x1 ({x1}) must be greater than x0 ({x0})")
    if y1 <= y0:
        raise ValueError(f"bbox {text!r}: y1 ({y1}) must be greater than y0 ({y0})")
    if x0 < 0 or y0 < 0:
        raise ValueError(f"bbox {text!r}: outside the image (coordinates must be >= 0)")
    if image_hw is not None:
        height, width = image_hw
        if x1 > width or y1 > height:
            raise ValueError(f"bbox {text!r}: outside the {width}x{height} (width x height) image")
    return FaceBox(x0, y0, x1, y1, score=None, detector="user")


def square_box(box: FaceBox, image_hw: tuple[int, int]) -> FaceBox:
    """The square integer box the masks and face crops are made from.

    Rule: side = the box's longer side (rounded; at most the image's shorter side), centred on the
    box centre, then shifted (not shrunk) to lie inside the image. The release squares InsightFace
    boxes so that the face crop keeps its aspect when CLIP resizes it to 224 x 224; its exact
    rounding is not in the parity vectors (they store the boxes already squared), so this is our rule.
    """
    height, width = image_hw
    side = min(round_half_up(max(box.width, box.height)), height, width)
    cx, cy = box.center
    x0 = min(max(round_half_up(cx - side / 2), 0), width - side)
    y0 = min(max(round_half_up(cy - side / 2), 0), height - side)
    return replace(box, x0=x0, y0=y0, x1=x0 + side, y1=y0 + side)
