"""The puppet demo (`anytalker demo`): a fresh scene, animated on the CPU by the bundled puppets-tiny model.

One command, no downloads: a new scene (looks, voices and a script from --seed, never a training
clip) is rendered, puppets-tiny generates the video from the scene's reference image, one audio
track per puppet and the face boxes, and the result is scored against the scene's ground truth.

Files, for `--out demo.mp4` (every name starts with the --out stem):

    demo.mp4              generated video (top) over the ground-truth render (bottom), with the mix
    demo.generated.mp4    the generated video alone, with the mix
    demo.reference.png    the reference image the model starts from
    demo.audio_<i>.wav    puppet i's own track (i = 0 the leftmost), 16 kHz mono
    demo.script.json      who says what when: phrases and per-puppet speaking intervals (seconds)
    demo.boxes.json       the face boxes given to the model (and the measurement boxes), left to right
    demo.metrics.json     lip sync, binding, Interactivity, mouth-opening amplitude (std and max,
                          / ground truth) and background flicker of the generated video and of the
                          ground-truth render (see anytalker.puppets.model.metrics)

Long scenes are generated in windows of the model's trained length (its generation_defaults.json;
49 frames for puppets-tiny), as every surface does; `max_frames_per_window` overrides it.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from .model import finite_mean

METRIC_KEYS = ("lip_own", "lip_other", "binding", "interactivity", "amplitude_std_ratio", "amplitude_max_ratio",
               "flicker", "flicker_ratio")
# The printed table: (key, title, width) per column.
TABLE = (("lip_own", "lip own", 9), ("lip_other", "lip other", 11), ("binding", "binding", 9),
         ("interactivity", "interactivity", 15), ("amplitude_std_ratio", "mouth std", 11),
         ("amplitude_max_ratio", "mouth max", 11), ("flicker", "flicker", 9), ("flicker_ratio", "flicker x", 11))


def demo_files(out: str | os.PathLike, persons: int) -> dict[str, Path]:
    """Every file `run_demo` writes, by role."""
    out = Path(out)
    stem = out.with_suffix("")
    files = {"video": out, "generated": Path(f"{stem}.generated.mp4"), "reference": Path(f"{stem}.reference.png"),
             "script": Path(f"{stem}.script.json"), "boxes": Path(f"{stem}.boxes.json"),
             "metrics": Path(f"{stem}.metrics.json")}
    for i in range(persons):
        files[f"audio_{i}"] = Path(f"{stem}.audio_{i}.wav")
    return files


def _frames_for(seconds: float, fps: int = 24) -> int:
    return max(1, round(seconds * fps / 4)) * 4 + 1


def run_demo(out: str | os.PathLike = "demo.mp4", persons: int = 2, seed: int | None = None, steps: int = 20,
             seconds: float = 2.0, model: str | os.PathLike | None = None, guidance_scale: float = 1.0,
             quiet: bool = False, max_frames_per_window: int | None = None) -> dict:
    """Makes the scene, generates it, writes the files above; returns the metrics dict."""
    import numpy as np
    import torch
    from PIL import Image

    from ..utils.atomic import atomic_write, write_json_atomic
    from ..video.io import write_video
    from .dataset import make_scene, write_wav
    from .model import load_pipeline, scene_metrics
    from .model.evaluation import generate_scene_result

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(4, os.cpu_count() or 1))))
    start = time.perf_counter()
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    pipe = load_pipeline(model)
    scene = make_scene(persons, seed, frames=_frames_for(seconds))
    result = generate_scene_result(pipe, scene, steps=steps, guidance_scale=guidance_scale, seed=seed,
                                   max_frames_per_window=max_frames_per_window)
    generated, info = result.frames, result.info

    files = demo_files(out, persons)
    files["video"].parent.mkdir(parents=True, exist_ok=True)
    write_video(files["video"], np.concatenate([generated, scene.frames], axis=1), scene.fps, audio=scene.mix,
                sample_rate=scene.sample_rate)
    write_video(files["generated"], generated, scene.fps, audio=scene.mix, sample_rate=scene.sample_rate)
    with atomic_write(files["reference"]) as tmp:
        Image.fromarray(scene.reference).save(tmp, format="PNG")
    for i, track in enumerate(scene.tracks):
        write_wav(files[f"audio_{i}"], track, scene.sample_rate)
    script = {"caption": scene.caption, "fps": scene.fps, "frames": scene.num_frames,
              "duration_s": round(scene.duration, 6), "script": scene.script.to_json(),
              "speaking_intervals": [[list(iv) for iv in person] for person in scene.speaking_intervals],
              "audio": [files[f"audio_{i}"].name for i in range(persons)]}
    write_json_atomic(files["script"], script)
    boxes = {"order": "left to right", "format": "[x0, y0, x1, y1] pixels, x1/y1 exclusive",
             "face_boxes": [list(box.as_tuple()) for box in scene.face_boxes], "width": scene.width,
             "height": scene.height}
    write_json_atomic(files["boxes"], boxes)
    metrics = {"seed": seed, "persons": persons, "frames": scene.num_frames, "steps": steps,
               "guidance_scale": guidance_scale, "model": str(model) if model else "bundled puppets-tiny",
               "max_frames_per_window": info.get("max_frames_per_window"), "windows": len(info.get("windows", [])),
               "generated": scene_metrics(generated, scene), "ground_truth": scene_metrics(scene.frames, scene)}
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    write_json_atomic(files["metrics"], metrics)
    if not quiet:
        print(f"scene: {persons} puppet{'s' if persons > 1 else ''}, seed {seed}, {scene.num_frames} frames "
              f"({scene.duration:.2f} s); {steps} denoising steps, {metrics['windows']} window"
              f"{'s' if metrics['windows'] != 1 else ''} of <= {metrics['max_frames_per_window']} frames, "
              f"{metrics['seconds']:.0f} s in all")
        print(f"{'':14}" + "".join(f"{title:>{width}}" for _, title, width in TABLE))
        for name in ("generated", "ground_truth"):
            print(f"{name:14}" + "".join(f"{_number(metrics[name], key):>{width}}" for key, _, width in TABLE))
        print("mouth std / max: the mouth opening's spread and maximum / the ground truth's; flicker: mean "
              "frame-to-frame change outside the faces (0-255), x: / the ground truth's")
        print(f"wrote {files['video']} (generated over ground truth) and {len(files) - 1} files next to it")
    return metrics


def _number(metrics: dict, key: str) -> str:
    """A table cell: the mean over puppets for per-puppet values, binding as a percentage."""
    value = metrics[key]
    if isinstance(value, list):
        value = finite_mean(value)
    if value is None or not math.isfinite(value):
        return "-"
    return f"{100 * value:.0f}%" if key == "binding" else f"{value:.2f}"
