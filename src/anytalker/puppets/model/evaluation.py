"""Generating held-out puppet scenes with a model and scoring them (the metrics of `metrics`),
and the recipe's evaluation steps (8 `evaluate`, 9 `generalise`).

`generate_scene` goes through `anytalker.pipeline.runner.generate`, the one generation API.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...utils.atomic import write_json_atomic
from .bundled import load_pipeline
from .metrics import correlation, scene_metrics, summarize_metrics


def generate_scene(pipe, scene, steps: int = 20, guidance_scale: float = 1.0, seed: int = 0,
                   max_frames_per_window: int | None = None) -> np.ndarray:
    """The model's video of a puppet scene: uint8 [F, H, W, 3], F = the scene's frame count.

    `pipe`: an AnyTalkerPipeline or a `LoadedPipeline`. Inputs as a user would give them: the
    reference image (the scene's neutral first frame), one track per puppet left to right, the
    scene's face boxes (squared, as `prepare` squares them) and its caption, at the scene's size;
    one window covers the scene unless `max_frames_per_window` says otherwise. guidance_scale 1 (no
    guidance): training never drops the conditions, so the unconditional branch was never learned.
    """
    from ...faces.detection import square_box
    from ...pipeline.runner import GenerationInputs, LoadedPipeline, SamplingSettings, generate, wrap_pipeline

    loaded = pipe if isinstance(pipe, LoadedPipeline) else wrap_pipeline(pipe)
    height, width = scene.reference.shape[:2]
    boxes = [square_box(box, (height, width)) for box in scene.face_boxes]
    window = max_frames_per_window or ((scene.num_frames - 1) // 4 * 4 + 5)
    sampling = SamplingSettings(size=(height, width), fps=scene.fps, steps=steps, guidance_scale=guidance_scale,
                                max_frames_per_window=window, seed=seed)
    return generate(loaded, GenerationInputs(scene.reference, scene.tracks, boxes, scene.caption), sampling).frames


def evaluation_scenes(count: int, persons: int = 2, seed: int = 900_000, frames: int = 49) -> list:
    """Held-out scenes: seeds seed, seed+1, ... (training clips use 53-bit hashed seeds)."""
    from ..dataset import make_scene

    return [make_scene(persons, seed + i, frames=frames) for i in range(count)]


def evaluate_puppets_model(pipe, scenes: Sequence, steps: int = 20, guidance_scale: float = 1.0, seed: int = 0,
                           progress: bool = False, keep_frames: bool = False, reference: str | None = None) -> dict:
    """Generates every scene with `pipe` and scores it (`metrics.scene_metrics`). Returns
    {"summary", "scenes"[, "frames"]}.

    pipe=None scores the ground-truth renders; reference="vae" scores the renders encoded and
    decoded by pipe's VAE (the best the model's pixels can do: a ceiling for lip sync, and the
    motion the VAE's coding noise alone adds to Interactivity).
    """
    from tqdm import tqdm

    per_scene, videos = [], []
    start = time.perf_counter()
    for scene in tqdm(scenes, desc="evaluate", unit="scene", disable=not progress):
        if pipe is None:
            frames = scene.frames
        elif reference == "vae":  # the renders through the model's VAE: what pixels it can show at best
            from ...training.vae import reconstruct

            frames = reconstruct(pipe.vae, scene.frames)
        else:
            frames = generate_scene(pipe, scene, steps, guidance_scale, seed)
        per_scene.append(scene_metrics(frames, scene))
        if keep_frames:
            videos.append(frames)
    result = {"summary": {**summarize_metrics(per_scene), "seconds": round(time.perf_counter() - start, 1)},
              "scenes": per_scene}
    if keep_frames:
        result["frames"] = videos
    return result


def vae_fidelity(vae, scenes) -> dict:
    """Reconstruction quality on scenes: PSNR and the mouth / eye-brow measurements of the
    reconstruction against those of the original render (pooled correlations)."""
    from ...training.vae import psnr, reconstruct
    from ..measure import measure_frames

    values = {"psnr": [], "mouth_r": [], "mouth_r_gt": [], "landmarks_r": []}
    for scene in scenes:
        rebuilt = reconstruct(vae, scene.frames)
        original, measured = measure_frames(scene.frames, scene.face_boxes), measure_frames(rebuilt, scene.face_boxes)
        values["psnr"].append(psnr(rebuilt, scene.frames))
        values["mouth_r"].append(correlation(measured.mouth_height, original.mouth_height))
        values["mouth_r_gt"].append(correlation(measured.mouth_height, scene.ground_truth["mouth_height"]))
        motion = [m.landmarks - np.nanmean(m.landmarks, axis=1, keepdims=True) for m in (measured, original)]
        values["landmarks_r"].append(correlation(*motion))
    return {key: float(np.nanmean(v)) for key, v in values.items()} | {"scenes": len(scenes)}


# --------------------------------------------------------------------------------------------
# Recipe steps 8 and 9
# --------------------------------------------------------------------------------------------

def evaluation_settings(recipe: dict, progress: bool) -> dict:
    """`evaluate_puppets_model` keywords of the recipe's `evaluation` section."""
    settings = recipe["evaluation"]
    return {"steps": settings["steps"], "guidance_scale": settings.get("guidance_scale", 1.0), "progress": progress}


def held_out_scenes(recipe: dict, persons: int = 2) -> list:
    """The recipe's held-out scenes: `evaluation` for two puppets, `generalisation` for more."""
    settings = recipe["evaluation"]
    if persons == 2:
        return evaluation_scenes(settings["scenes"], 2, settings["seed"], settings["frames"])
    other = recipe["generalisation"]
    return evaluation_scenes(other["scenes"], persons, other["seed"], settings["frames"])


def step_evaluate(out: Path, recipe: dict, progress: bool) -> dict:
    """Stage 1 vs stage 2 vs the ground-truth renders (and those through the VAE); OUT/evaluation.json."""
    scenes, kwargs = held_out_scenes(recipe), evaluation_settings(recipe, progress)
    results = {"ground_truth": evaluate_puppets_model(None, scenes),
               "vae_reconstruction": evaluate_puppets_model(load_pipeline(out / "base"), scenes, reference="vae"),
               "stage1": evaluate_puppets_model(load_pipeline(out / "puppets-tiny-stage1"), scenes, **kwargs),
               "stage2": evaluate_puppets_model(load_pipeline(out / "puppets-tiny"), scenes, **kwargs)}
    write_json_atomic(out / "evaluation.json", results)
    return {name: result["summary"] for name, result in results.items()}


def step_generalise(out: Path, recipe: dict, progress: bool) -> dict:
    """Scenes with more puppets than training ever showed (recipe `generalisation.persons`)."""
    persons = recipe["generalisation"]["persons"]
    scenes, kwargs = held_out_scenes(recipe, persons), evaluation_settings(recipe, progress)
    results = {"persons": persons,
               "ground_truth": evaluate_puppets_model(None, scenes),
               "stage1": evaluate_puppets_model(load_pipeline(out / "puppets-tiny-stage1"), scenes, **kwargs),
               "stage2": evaluate_puppets_model(load_pipeline(out / "puppets-tiny"), scenes, **kwargs)}
    write_json_atomic(out / "generalisation.json", results)
    return {name: (result["summary"] if isinstance(result, dict) else result) for name, result in results.items()}
