"""Who speaks when in a benchmark clip: reading speaker_duration.json and asking "is person p listening at frame t?".

The InteractiveEyes file (`{"interact_K.mp4": {"left": [[start, end], ...], "right": [...]}}`) does
NOT hold decimal seconds. Its values are SS.FF timecodes at 30 fps: "4.19" is 4 s + 19 frames =
4.633 s. Checked on all 29 clips of the released file:
- no fraction exceeds .29 (the largest, .29, occurs in interact_9 and interact_22): decimal
  seconds would put about 70% of the non-zero fractions above .29;
- read as timecodes, the last interval of 28 of the 29 clips ends at the audio's length within one
  30-fps frame (interact_10: "8.18" -> 8.600 s, tracks 8.597 s; interact_1: "7.11" -> 7.367 s, tracks
  7.360 s); read as decimals they end 0.01-0.70 s early (interact_2's right turn really ends
  before the clip does, 6.067 s of 6.72 s);
- tests/test_audio.py: the VAD's median boundary error against the labels is 0.065 s read as
  timecodes and 0.51 s read as decimals.
So `time_format="timecode30"` is the default; `"seconds"` reads the numbers literally (for files
that do hold seconds). A timecode whose frame part is 30 or more is rejected, never reinterpreted.

Listen-only speakers are written `[[0.00, 0.00]]` (interact_23..29, left). An empty interval
means "never speaks": with inclusive bounds it would otherwise mark frame 0 as speaking.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TIME_FORMATS", "SpeakerLabels", "SpeakerLabelError", "load_speaker_labels", "parse_time",
           "labels_for_video", "listening_mask", "speaking_mask"]

TIME_FORMATS = ("timecode30", "seconds")
_TIMECODE_FPS = 30


class SpeakerLabelError(ValueError):
    """A speaker-interval file or entry that cannot be used, with the reason."""


def parse_time(value, time_format: str = "timecode30") -> float:
    """One label value -> seconds. "timecode30": SS.FF with FF < 30 frames; "seconds": as written."""
    if time_format not in TIME_FORMATS:
        raise ValueError(f"unknown time format {time_format!r}: expected one of {', '.join(TIME_FORMATS)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise SpeakerLabelError(f"interval bound {value!r} is not a finite non-negative number")
    if time_format == "seconds":
        return float(value)
    whole = math.floor(value)
    # Two decimals as written in the file ("4.19" is stored as 4.18999...): round, never truncate.
    frames = round((value - whole) * 100)
    if abs((value - whole) * 100 - frames) > 1e-6:
        raise SpeakerLabelError(f"timecode {value!r} has more than two decimals: not an SS.FF timecode "
                                "(use time_format='seconds' for decimal seconds)")
    if frames >= _TIMECODE_FPS:
        raise SpeakerLabelError(f"timecode {value!r} has frame part {frames} >= {_TIMECODE_FPS}: not an SS.FF "
                                "timecode at 30 fps (use time_format='seconds' for decimal seconds)")
    return whole + frames / _TIMECODE_FPS


@dataclass(frozen=True)
class SpeakerLabels:
    """Speaking intervals of one clip, one list per person in left-to-right order, in seconds."""

    names: tuple[str, ...]  # "left", "right" (or the file's keys in file order)
    intervals: tuple[tuple[tuple[float, float], ...], ...]  # per person: sorted (start_s, end_s), inclusive

    @property
    def num_people(self) -> int:
        return len(self.names)

    @property
    def end_s(self) -> float:
        """Where the last labelled interval ends (the clip length for the benchmark's files)."""
        return max((end for person in self.intervals for _, end in person), default=0.0)

    @classmethod
    def from_entry(cls, entry: Mapping, time_format: str = "timecode30", clip: str = "clip") -> SpeakerLabels:
        """One clip's entry `{"left": [[s, e], ...], "right": [...]}` (or N keys, left to right in file order)."""
        if not isinstance(entry, Mapping) or not entry:
            raise SpeakerLabelError(f"{clip}: expected an object of person -> [[start, end], ...], got {entry!r}")
        keys = list(entry)
        # "left"/"right" are the benchmark's names; any other keys keep the file's order (left to right).
        if set(keys) == {"left", "right"}:
            keys = ["left", "right"]
        people = []
        for key in keys:
            raw = entry[key]
            if not isinstance(raw, Sequence) or isinstance(raw, str):
                raise SpeakerLabelError(f"{clip}/{key}: expected a list of [start, end] pairs, got {raw!r}")
            spans = []
            for pair in raw:
                if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
                    raise SpeakerLabelError(f"{clip}/{key}: interval {pair!r} is not a [start, end] pair")
                start, end = (parse_time(v, time_format) for v in pair)
                if end < start:
                    raise SpeakerLabelError(f"{clip}/{key}: interval {list(pair)} ends before it starts")
                if end > start:  # [x, x] is the file's way of saying "never speaks" (see module doc)
                    spans.append((start, end))
            people.append(tuple(sorted(spans)))
        return cls(tuple(str(k) for k in keys), tuple(people))

    def speaking(self, person: int, num_frames: int, fps: float) -> np.ndarray:
        """bool [num_frames]: person speaks at t = frame / fps (inclusive bounds, as the release)."""
        return speaking_mask(self.intervals[person], num_frames, fps)


def speaking_mask(intervals, num_frames: int, fps: float) -> np.ndarray:
    """bool [num_frames]: t = frame / fps lies in some [start, end] (both ends inclusive)."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    times = np.arange(num_frames) / fps
    mask = np.zeros(num_frames, bool)
    for start, end in intervals:
        # A tolerance of 1e-9 s keeps t = 30/30 inside an interval ending at "1.00" despite rounding.
        mask |= (times >= start - 1e-9) & (times <= end + 1e-9)
    return mask


def listening_mask(intervals, num_frames: int, fps: float) -> np.ndarray:
    return ~speaking_mask(intervals, num_frames, fps)


def load_speaker_labels(path: str | os.PathLike, time_format: str = "timecode30") -> dict[str, SpeakerLabels]:
    """speaker_duration.json -> {video file name: SpeakerLabels}; every entry is validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"speaker interval file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SpeakerLabelError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, Mapping):
        raise SpeakerLabelError(f"{path}: expected an object of video name -> speakers, got {type(data).__name__}")
    return {str(name): SpeakerLabels.from_entry(entry, time_format, clip=str(name)) for name, entry in data.items()}


def labels_for_video(labels: Mapping[str, SpeakerLabels], video: str | os.PathLike) -> SpeakerLabels:
    """The entry for a video, matched by file name (`interact_7.mp4`), then by stem; KeyError says what exists."""
    name = Path(video).name
    if name in labels:
        return labels[name]
    by_stem = {Path(key).stem: value for key, value in labels.items()}
    if Path(name).stem in by_stem:
        return by_stem[Path(name).stem]
    sample = ", ".join(sorted(labels)[:3])
    raise KeyError(f"no speaker intervals for {name} (the file has {len(labels)} entries, e.g. {sample})")
