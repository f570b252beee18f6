"""Benchmark folders -> cases: what kind of folder it is, its cases in natural order, the selection
asked for, and each case's reference image (clips: the first frame, written once)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...utils.atomic import atomic_write
from ...video.io import IMAGE_SUFFIXES

__all__ = ["BENCHMARK_KINDS", "BenchError", "Case", "benchmark_kind", "clip_reference", "find_cases",
           "first_frame", "natural_key", "reference_image", "select_cases"]

BENCHMARK_KINDS = ("interactiveeyes", "clips")


class BenchError(ValueError):
    """Bad benchmark input: the message says what is wrong and what to pass."""


@dataclass
class Case:
    name: str
    image: Path | None  # reference image (clips: written from the first frame when first needed)
    audio: list[Path]  # one track per person, left to right (clips: the clip itself)
    labels: object | None = None  # SpeakerLabels (InteractiveEyes)
    clip: Path | None = None  # clips benchmark: the source video
    problem: tuple[str, str] | None = None  # (reason, message) when an input is missing

    @property
    def people(self) -> int:
        return len(self.audio)


def natural_key(name: str):
    """interact_2 before interact_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def benchmark_kind(folder: str | Path) -> str:
    """"interactiveeyes" (a speaker_duration.json) or "clips" (a folder of videos)."""
    from ..interactivity import video_files

    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"benchmark folder not found: {folder}")
    if (folder / "speaker_duration.json").is_file():
        return "interactiveeyes"
    if video_files(folder):
        return "clips"
    raise BenchError(f"{folder} is neither an InteractiveEyes folder (speaker_duration.json, audio_left/, "
                     "audio_right/) nor a folder of clips (.mp4, .mov, .mkv, .webm, .avi)")


def reference_image(frames_dir: Path, name: str) -> Path | None:
    """frames_dir/<name>.png (or another image suffix, either case), None when there is none."""
    for suffix in IMAGE_SUFFIXES:
        for candidate in (frames_dir / f"{name}{suffix}", frames_dir / f"{name}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def find_cases(folder: str | Path, kind: str, image: str | None = None, frames: str | None = None,
               time_format: str = "timecode30") -> list[Case]:
    """Every case of a benchmark folder, in natural order; missing inputs are marked on the case."""
    from ..interactivity import video_files
    from ..speakers import load_speaker_labels

    folder = Path(folder).absolute()  # sidecars record absolute input paths: a rerun from elsewhere matches
    if kind == "clips":
        clips = sorted(video_files(folder), key=lambda p: natural_key(p.stem))
        return [Case(clip.stem, None, [clip], clip=clip) for clip in clips]
    labels = load_speaker_labels(folder / "speaker_duration.json", time_format)
    frames_dir = Path(frames).absolute() if frames else folder / "frames"
    if image is None and not frames_dir.is_dir():
        raise BenchError(
            f"no reference images: {frames_dir} does not exist. The InteractiveEyes release ships no reference "
            "frames (they come from web videos): pass --image IMAGE (one two-person image for every case) or "
            "--frames DIR holding DIR/<case>.png for each case")
    if image is not None and not Path(image).is_file():
        raise BenchError(f"--image not found: {image}")
    cases = []
    for key in sorted(labels, key=natural_key):
        name, entry = Path(key).stem, labels[key]
        if entry.names != ("left", "right"):
            raise BenchError(f"{key}: expected left and right speakers, got {list(entry.names)}")
        audio = [folder / f"audio_{side}" / f"{name}_{side}.wav" for side in entry.names]
        reference = Path(image).absolute() if image is not None else reference_image(frames_dir, name)
        case = Case(name, reference, audio, labels=entry)
        missing = [str(path) for path in audio if not path.is_file()]
        if missing:
            case.problem = ("missing_audio", f"audio track not found: {', '.join(missing)}")
        elif reference is None:
            case.problem = ("no_reference_image",
                            f"no reference image {name}{{{','.join(IMAGE_SUFFIXES)}}} in {frames_dir}")
        cases.append(case)
    return cases


def select_cases(cases: list[Case], names: Sequence[str] | None, limit: int | None) -> list[Case]:
    """The named cases (in the order named, ".mp4" optional) and at most `limit` of them."""
    if names is not None:
        wanted = [n.strip().removesuffix(".mp4") for n in names if n.strip()]
        known = {case.name: case for case in cases}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            sample = ", ".join(sorted(known, key=natural_key)[:3])
            raise BenchError(f"unknown case(s) {', '.join(unknown)}: the benchmark has {len(known)} cases, "
                             f"e.g. {sample}")
        cases = [known[n] for n in dict.fromkeys(wanted)]
    if limit is not None:  # >= 1: BenchSettings.validate
        cases = cases[:limit]
    return cases


def first_frame(clip: Path, out: Path) -> Path:
    """The clip's first frame as a PNG (atomic); raises ValueError when the clip has no readable frame."""
    import av
    from PIL import Image

    try:
        with av.open(str(clip)) as container:
            if not container.streams.video:
                raise ValueError(f"no video stream in {clip}")
            frame = next(container.decode(video=0), None)
            if frame is None:
                raise ValueError(f"no decodable frame in {clip}")
            rgb = frame.to_ndarray(format="rgb24")
    except av.FFmpegError as error:
        raise ValueError(f"not a readable video: {clip} ({error})") from None
    with atomic_write(out) as tmp:
        Image.fromarray(rgb).save(tmp)
    return out


def clip_reference(case: Case, out: Path) -> Path:
    """A clip case's reference image, OUT/references/<case>.png (its first frame, written once); set on
    the case. Raises ValueError when the clip has no readable frame."""
    case.image = out / "references" / f"{case.name}.png"
    if not case.image.is_file():
        first_frame(case.clip, case.image)
    return case.image
