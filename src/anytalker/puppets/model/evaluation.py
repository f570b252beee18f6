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


def scene_model(pipe):
    """`pipe` as a runner.LoadedPipeline whose defaults are its model folder's (`model_defaults`:
    generation_defaults.json, e.g. puppets-tiny's 49-frame window) when it was loaded from one."""
    from ...pipeline.runner import LoadedPipeline, ModelSettings, wrap_pipeline

    if isinstance(pipe, LoadedPipeline):
        return pipe
    folder = getattr(pipe, "name_or_path", None)
    if folder and (Path(folder) / "model_index.json").is_file():
        return wrap_pipeline(pipe, ModelSettings(model=str(folder)))
    return wrap_pipeline(pipe)


def generate_scene_result(pipe, scene, steps: int = 20, guidance_scale: float = 1.0, seed: int = 0,
                          max_frames_per_window: int | None = None, **sampling):
    """`generate_scene` as a runner.GenerationResult: frames and info (its "windows", and
    "max_frames_per_window", the window length used). `sampling`: other SamplingSettings fields
    (e.g. audio_guidance_scale, motion_frames)."""
    from ...faces.detection import square_box
    from ...pipeline.runner import GenerationInputs, SamplingSettings, generate, resolved_sampling

    loaded = scene_model(pipe)
    height, width = scene.reference.shape[:2]
    boxes = [square_box(box, (height, width)) for box in scene.face_boxes]
    settings = resolved_sampling(loaded, SamplingSettings(size=(height, width), fps=scene.fps, steps=steps,
                                                          guidance_scale=guidance_scale, seed=seed,
                                                          max_frames_per_window=max_frames_per_window, **sampling))
    result = generate(loaded, GenerationInputs(scene.reference, scene.tracks, boxes, scene.caption), settings)
    result.info["max_frames_per_window"] = settings.max_frames_per_window
    return result


def generate_scene(pipe, scene, steps: int = 20, guidance_scale: float = 1.0, seed: int = 0,
                   max_frames_per_window: int | None = None, **sampling) -> np.ndarray:
    """The model's video of a puppet scene: uint8 [F, H, W, 3], F = the scene's frame count.

    `pipe`: an AnyTalkerPipeline or a `LoadedPipeline`. Inputs as a user would give them: the
    reference image (the scene's neutral first frame), one track per puppet left to right, the
    scene's face boxes (squared, as `prepare` squares them) and its caption, at the scene's size.
    Windows: `max_frames_per_window` frames, by default the model's (`runner.model_defaults`: the
    trained clip length in the model folder's generation_defaults.json, 49 for puppets-tiny; 81 for
    a pipeline without a folder). guidance_scale 1 (no guidance): training never drops the
    conditions, so the unconditional branch was never learned.
    """
    return generate_scene_result(pipe, scene, steps, guidance_scale, seed, max_frames_per_window, **sampling).frames


def evaluation_scenes(count: int, persons: int = 2, seed: int = 900_000, frames: int = 49) -> list:
    """Held-out scenes: seeds seed, seed+1, ... (training clips use 53-bit hashed seeds)."""
    from ..dataset import make_scene

    return [make_scene(persons, seed + i, frames=frames) for i in range(count)]


def evaluate_puppets_model(pipe, scenes: Sequence, steps: int = 20, guidance_scale: float = 1.0, seed: int = 0,
                           progress: bool = False, keep_frames: bool = False, reference: str | None = None,
                           max_frames_per_window: int | None = None) -> dict:
    """Generates every scene with `pipe` and scores it (`metrics.scene_metrics`). Returns
    {"summary", "scenes"[, "frames"]}. Windows: the model's trained length unless
    `max_frames_per_window` says otherwise (see `generate_scene`).

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
            frames = generate_scene(pipe, scene, steps, guidance_scale, seed, max_frames_per_window)
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
    """`evaluate_puppets_model` keywords of the recipe's `evaluation` section. The held-out scenes
    are as long as the training clips (`evaluation.frames`, 49 = `data.frames`): one window each,
    also for pipelines made in memory (ablations) and in quick mode (9-frame clips, 49-frame scenes)."""
    settings = recipe["evaluation"]
    return {"steps": settings["steps"], "guidance_scale": settings.get("guidance_scale", 1.0), "progress": progress,
            "max_frames_per_window": max(trained_window(recipe), int(settings["frames"]))}


def trained_window(recipe: dict) -> int:
    """The longest window the recipe's model was trained on: its clips' frame count (4n+1)."""
    return int(recipe["data"]["frames"])


def generation_defaults(recipe: dict) -> dict:
    """What an exported model folder's generation_defaults.json holds (`runner.model_defaults` reads
    it): the trained window length and the recipe's sampling settings."""
    settings = recipe["evaluation"]
    return {"max_frames_per_window": trained_window(recipe), "steps": settings["steps"],
            "guidance_scale": settings.get("guidance_scale", 1.0)}


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
