"""`BenchSettings`: what to benchmark and how to score it, and the metrics a benchmark gets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...pipeline.settings import Label, SettingsError
from ..landmarks import LANDMARK_BACKENDS
from ..speakers import TIME_FORMATS
from .cases import BenchError

__all__ = ["EMBEDDERS", "METRICS", "BenchSettings", "metrics_for"]

METRICS = ("interactivity", "sync", "identity")
EMBEDDERS = ("dlib", "arcface")  # identity: dlib's offline face descriptor, or an ArcFace ONNX file


@dataclass(frozen=True)
class BenchSettings:
    """What to benchmark and how to score it (the model and its sampling are separate settings).

    benchmark: an InteractiveEyes folder or a folder of single-person clips; out: the output folder.
    cases / limit: the cases to run (default all, natural order). image / frames: InteractiveEyes
    reference images (one image for every case, or a folder of <case>.png; default BENCHMARK/frames).
    metrics: from METRICS (default: interactivity for InteractiveEyes, identity for clips; plus sync
    when `syncnet` is given). overwrite regenerates kept videos, reevaluate recomputes kept records.
    """

    benchmark: str | Path
    out: str | Path
    cases: tuple[str, ...] | None = None
    limit: int | None = None
    image: str | None = None
    frames: str | None = None
    metrics: tuple[str, ...] | None = None
    syncnet: str | None = None  # syncnet_v2.model, never downloaded
    backend: str = "dlib"  # landmark backend (LANDMARK_BACKENDS)
    insightface_dir: str | None = None
    max_bad_fraction: float = 0.1  # Interactivity: frames with a missing person / extra face tolerated
    time_format: str = "timecode30"  # speaker_duration.json values (TIME_FORMATS)
    embedder: str = "dlib"  # identity embedder (EMBEDDERS); arcface needs `arcface`
    arcface: str | None = None
    id_stride: int = 5  # identity: embed every n-th frame
    overwrite: bool = False
    reevaluate: bool = False
    prompt: str = ""  # text prompt for every case

    def validate(self, label: Label | None = None) -> "BenchSettings":
        label = label or (lambda name: name)
        for name in ("benchmark", "out"):
            if not getattr(self, name):
                raise SettingsError(name, f"{label(name)} is empty")
        if self.limit is not None and self.limit < 1:
            raise SettingsError("limit", f"{label('limit')} must be >= 1, got {self.limit}")
        if self.id_stride < 1:
            raise SettingsError("id_stride", f"{label('id_stride')} must be >= 1, got {self.id_stride}")
        for name, choices in (("backend", LANDMARK_BACKENDS), ("time_format", TIME_FORMATS),
                              ("embedder", EMBEDDERS)):
            if getattr(self, name) not in choices:
                raise SettingsError(name, f"{label(name)} {getattr(self, name)!r}: choose from {', '.join(choices)}")
        if self.metrics is not None:
            if not self.metrics or any(m not in METRICS for m in self.metrics):
                raise SettingsError("metrics", f"{label('metrics')} {','.join(self.metrics)!r}: choose from "
                                               f"{', '.join(METRICS)}")
            if "sync" in self.metrics and not self.syncnet:
                raise SettingsError("syncnet", f"the sync metric needs SyncNet weights: pass {label('syncnet')} "
                                               "PATH/syncnet_v2.model (nothing is downloaded)")
        return self


def metrics_for(bench: BenchSettings, kind: str) -> tuple[str, ...]:
    """The metrics to compute on a benchmark of `kind`: the ones asked for, or its defaults."""
    if bench.metrics is not None:
        metrics = tuple(dict.fromkeys(bench.metrics))
    else:
        metrics = ("interactivity",) if kind == "interactiveeyes" else ("identity",)
        metrics += ("sync",) if bench.syncnet else ()
    if "interactivity" in metrics and kind != "interactiveeyes":
        raise BenchError("interactivity needs speaker intervals: only an InteractiveEyes folder "
                         "(speaker_duration.json) has them")
    return metrics
