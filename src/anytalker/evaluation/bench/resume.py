"""Resuming a bench run: when a kept video is this run's output, and when a kept metric record still
holds for its video.

- A kept video counts when its sidecar shows the same model, seed, steps, fps, guidance, size (when
  one is asked for), reference image and audio; the requested sampling settings are compared after
  the model's defaults fill them (`anytalker.pipeline.runner.resolved_sampling`), as the sidecar
  records what was used.
- A kept metric record counts when it was computed from the same video file (size and mtime) with
  the same metric settings.
"""

from __future__ import annotations

from pathlib import Path

from ...pipeline.settings import ModelSettings, SamplingSettings
from ...utils.records import jsonable
from .cases import Case

__all__ = ["expected_sidecar", "file_signature", "kept_record_matches", "kept_video_mismatch",
           "same_model"]

def file_signature(path: Path) -> dict:
    """What tells a file was rewritten: its size and modification time."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def expected_sidecar(model: ModelSettings, sampling: SamplingSettings) -> dict:
    """The sidecar values a kept video must have to count as this run's output (`sampling` resolved:
    no None left for the model's defaults)."""
    expected = {"model": model.model, "seed": sampling.seed, "num_inference_steps": sampling.steps,
                "fps": sampling.fps, "guidance_scale": sampling.guidance_scale,
                "audio_guidance_scale": sampling.audio_guidance_scale}
    if sampling.size:
        expected["height"], expected["width"] = sampling.size
    return expected


def same_model(a, b) -> bool:
    """The same model name, or two spellings of one existing folder."""
    if a == b:
        return True
    try:
        return Path(a).resolve() == Path(b).resolve() and Path(a).exists()
    except (TypeError, OSError):
        return False


def kept_video_mismatch(case: Case, sidecar: dict, model: ModelSettings, sampling: SamplingSettings) -> str | None:
    """Why a kept video is not this run's output (None when it is)."""
    differences = []
    for key, want in expected_sidecar(model, sampling).items():
        have = sidecar.get(key)
        if key == "model" and same_model(have, want):
            continue
        if have != want:
            differences.append(f"{key}={have!r} (this run: {want!r})")
    task = sidecar.get("task") or {}
    if case.clip is None and task.get("image") and Path(task["image"]) != case.image:  # clips: derived
        differences.append(f"reference image {task['image']} (this run: {case.image})")
    if task.get("audio") and [Path(a) for a in task["audio"]] != case.audio:
        differences.append(f"audio {task['audio']} (this run: {[str(a) for a in case.audio]})")
    return ", ".join(differences) or None


def kept_record_matches(record: dict | None, signature: dict, settings: dict) -> bool:
    """A kept metric record still holds: made from this very video file with these metric settings."""
    return bool(record) and record.get("video_signature") == signature and record.get("settings") == jsonable(settings)
