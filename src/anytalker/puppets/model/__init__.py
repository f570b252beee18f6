"""puppets-tiny: a tiny AnyTalker trained on the puppet world on a CPU, its recipe and its evaluation.

The recipe (`train_puppets_model`, CLI `anytalker puppets train-model OUT [--quick]`) runs, each
step resumable and skipped when done (state in OUT/recipe_state.json):

1. data       single-puppet clips (stage 1) and two-puppet conversations (stage 2), `puppets make`
              style clip folders under OUT/clips/{stage1,stage2}
2. vae        a Wan VAE of base width 8 trained from scratch on those clips (training/vae.py):
              image phase, video phase, latent statistics re-estimated; OUT/vae + OUT/vae_metrics.json
3. base       the pipeline to train: trained VAE + random tiny umT5 / CLIP / wav2vec2 (frozen, fixed
              seed: random features still carry what the model needs) + a CPU-sized transformer with
              fused AFCA; OUT/base (diffusers format)
4. prepare    `anytalker prepare` of both sets with cached encodings (see `PuppetCache`): stage-1
              singles as one 64x64 tile (the face-centred half view), stage-2 pairs at 64x128
5. stage1     `anytalker train` with configs/puppets/stage1.yaml (half of the batches two singles
              side by side); OUT/stage1
6. stage2     from stage 1's EMA weights, configs/puppets/stage2.yaml on the conversations; OUT/stage2
7. export     OUT/puppets-tiny (stage 2) and OUT/puppets-tiny-stage1 (stage 1 only), diffusers format
8. evaluate   held-out scenes (fresh seeds): stage 1 vs stage 2 vs the ground-truth renders;
              OUT/evaluation.json
9. generalise the same on 3-puppet scenes (training saw at most 2); OUT/generalisation.json
10. ablations each recipe `ablations` entry (AFCA without face masks, stage 1 without pairs,
              stage 2 skipped) retrained with the same data and steps, evaluated alike;
              OUT/ablations/NAME
11. report    OUT/results.md (the tables of the README) and puppets-tiny/evaluation.json

The model alone is steps 1-7 (`--until export`, ~40 minutes on 2 CPU cores); the whole recipe
with its evaluations and ablations ~2 hours.

Sizes live in configs/puppets/recipe.yaml (and the two training configs next to it).

Evaluation (`evaluate_puppets_model(pipe, scenes)`; the demo uses `scene_metrics` on one scene):
- lip sync: correlation of each puppet's mouth opening, read from the generated pixels with the
  scene's face boxes (puppets.measure), with its own track's loudness envelope (aligned by the
  renderer's MOUTH_LAG_FRAMES), and with the other puppets' envelopes;
- binding: over one-speaker moments (runs of frames where exactly one puppet speaks, cut into
  pieces of at most half a second), the share where the speaker's mouth moves most (sum of
  |frame-to-frame change| of the measured opening);
- Interactivity: the release's metric (evaluation.interactivity) on the eye/brow landmarks
  measured from the pixels: mean eye/brow motion per frame while a puppet does not speak.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ...utils.atomic import atomic_directory, atomic_write, write_json_atomic
from .cache import FPS, PuppetCache

BUNDLED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "puppets-tiny"
RETRAIN_HINT = ("build them with `anytalker puppets train-model runs/puppets --until export` (about 40 minutes "
                "on 2 CPU cores) "
                "and copy runs/puppets/puppets-tiny to {target}, or pass a model folder")
STEPS = ("data", "vae", "base", "prepare", "stage1", "stage2", "export", "evaluate", "generalise", "ablations",
         "report")


class WeightsMissing(FileNotFoundError):
    """The bundled puppets-tiny weights are not installed."""


def default_config_dir() -> Path:
    """configs/puppets of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[4] / "configs" / "puppets"


def load_recipe(config_dir: str | os.PathLike | None = None, quick: bool = False) -> dict:
    """The recipe: {"recipe": recipe.yaml (quick overrides applied), "stage1": ..., "stage2": ...}."""
    import yaml

    folder = Path(config_dir) if config_dir else default_config_dir()
    names = {"recipe": "recipe.yaml", "stage1": "stage1.yaml", "stage2": "stage2.yaml"}
    missing = [name for name in names.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"recipe configs {missing} not found in {folder}: run from a source checkout "
                                f"(configs/puppets/) or pass --configs DIR")
    loaded = {key: yaml.safe_load((folder / name).read_text()) for key, name in names.items()}
    if quick:
        overrides = loaded["recipe"].pop("quick", {}) or {}
        for key in ("stage1", "stage2"):
            _merge(loaded[key], overrides.pop(key, {}) or {})
        _merge(loaded["recipe"], overrides)
    else:
        loaded["recipe"].pop("quick", None)
    return loaded


def _merge(target: dict, overrides: dict) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------

def build_components(vae, transformer_config: dict, encoder_seed: int = 0) -> dict:
    """Pipeline components: `vae` + the random tiny encoders of `random_tiny_components(encoder_seed)`
    + a fresh AnyTalkerTransformer (fused AFCA) with `transformer_config` on top of their widths."""
    import torch

    from ...models import AnyTalkerTransformer
    from ...pipeline.tiny import random_tiny_components

    parts = random_tiny_components(encoder_seed)
    text_dim = parts["text_encoder"].config.d_model
    image_dim = parts["image_encoder"].config.hidden_size
    audio = parts["audio_encoder"].config
    config = {"text_dim": text_dim, "text_len": 32, "image_dim": image_dim, "face_dim": image_dim,
              "audio_layers": audio.num_hidden_layers, "audio_channels": audio.hidden_size,
              "audio_attention": "fused", **transformer_config}
    torch.manual_seed(encoder_seed + 1)
    parts["transformer"] = AnyTalkerTransformer(**config).eval()
    parts["vae"] = vae.eval()
    for name in ("text_encoder", "image_encoder", "audio_encoder", "vae"):
        parts[name].requires_grad_(False)
    return parts


def load_pipeline(path: str | os.PathLike | None = None):
    """The puppets-tiny pipeline (fp32, CPU) from `path` (default: the bundled weights)."""
    import torch

    from ...pipeline import AnyTalkerPipeline

    folder = Path(path) if path else BUNDLED_WEIGHTS
    if not (folder / "model_index.json").is_file():
        if path is None:
            raise WeightsMissing(f"the bundled puppets-tiny weights are missing ({folder}); "
                                 + RETRAIN_HINT.format(target=folder))
        raise WeightsMissing(f"no diffusers pipeline folder at {folder} (model_index.json missing)")
    with _quiet_loading():
        pipe = AnyTalkerPipeline.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _quiet_loading:
    """No "Loading pipeline components" / "Loading weights" bars or info logs while loading."""

    def __enter__(self):
        import diffusers.utils.logging as diffusers_logging
        import transformers.utils.logging as transformers_logging

        self.modules = (diffusers_logging, transformers_logging)
        self.state = [(m.is_progress_bar_enabled(), m.get_verbosity()) for m in self.modules]
        for module in self.modules:
            module.disable_progress_bar()
            module.set_verbosity_error()
        return self

    def __exit__(self, *exc):
        for module, (bars, verbosity) in zip(self.modules, self.state):
            if bars:
                module.enable_progress_bar()
            module.set_verbosity(verbosity)


# --------------------------------------------------------------------------------------------
# Generation and evaluation
# --------------------------------------------------------------------------------------------

def generate_scene(pipe, scene, steps: int = 20, guidance_scale: float = 1.0, seed: int = 0,
                   max_frames_per_window: int | None = None) -> np.ndarray:
    """The model's video of a puppet scene: uint8 [F, H, W, 3], F = the scene's frame count.

    Inputs as a user would give them: the reference image (the scene's neutral first frame), one
    track per puppet left to right, the scene's face boxes (squared, as `prepare` squares them) and
    its caption. guidance_scale 1 (no guidance): training never drops the conditions, so the
    unconditional branch was never learned.
    """
    import torch

    from ...faces.detection import square_box

    height, width = scene.reference.shape[:2]
    boxes = [square_box(box, (height, width)) for box in scene.face_boxes]
    window = max_frames_per_window or ((scene.num_frames - 1) // 4 * 4 + 5)
    result = pipe(scene.reference, [np.asarray(t, np.float32) for t in scene.tracks], boxes, prompt=scene.caption,
                  height=height, width=width, fps=scene.fps, num_inference_steps=steps,
                  guidance_scale=guidance_scale, max_frames_per_window=window,
                  generator=torch.Generator().manual_seed(seed))
    return result.frames


def _corr(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    denom = math.sqrt(float((a**2).sum() * (b**2).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def finite_mean(values) -> float:
    """Mean of the finite values (None and NaN skipped); NaN when there are none."""
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _one_speaker_moments(speaking: np.ndarray, min_frames: int = 4, max_frames: int = 12) -> list[tuple[int, int, int]]:
    """(speaker, start, stop) pieces of the runs where exactly one puppet speaks."""
    single = speaking.sum(axis=0) == 1
    who = np.where(single, speaking.argmax(axis=0), -1)
    moments, t = [], 0
    frames = speaking.shape[1]
    while t < frames:
        if who[t] < 0:
            t += 1
            continue
        end = t
        while end < frames and who[end] == who[t]:
            end += 1
        for start in range(t, end, max_frames):
            stop = min(start + max_frames, end)
            if stop - start >= min_frames:
                moments.append((int(who[t]), start, stop))
        t = end
    return moments


def scene_metrics(frames: np.ndarray, scene) -> dict:
    """Lip sync, binding and Interactivity of a video of `scene` (generated, or scene.frames for the
    ground-truth render), all read from its pixels with the scene's face boxes."""
    from ...evaluation.interactivity import score_tracks
    from ...evaluation.speakers import SpeakerLabels
    from ...evaluation.tracking import Tracks
    from ..behaviour import MOUTH_LAG_FRAMES
    from ..measure import measure_frames

    frames = np.asarray(frames)[: scene.num_frames]
    n, count = scene.persons, frames.shape[0]
    measured = measure_frames(frames, scene.face_boxes)
    mouth = measured.mouth_height  # [N, F]
    lag = MOUTH_LAG_FRAMES
    envelope = np.asarray(scene.ground_truth["envelope"], np.float64)[:, :count]
    own = [_corr(mouth[i, lag:], envelope[i, :count - lag]) for i in range(n)]
    other = [finite_mean([_corr(mouth[i, lag:], envelope[j, :count - lag]) for j in range(n) if j != i])
             for i in range(n)]

    speaking = np.asarray(scene.ground_truth["speaking"], bool)[:, :count]
    wins = moments = 0
    if n > 1:
        motion = np.abs(np.diff(mouth, axis=1))  # [N, F-1]: change from frame t to t+1
        for speaker, start, stop in _one_speaker_moments(speaking):
            a, b = min(start + lag, count - 1), min(stop + lag, count - 1)  # the mouth trails the voice
            if b <= a:
                continue
            moved = np.nan_to_num(motion[:, a:b].sum(axis=1), nan=-1.0)
            moments += 1
            wins += int(np.argmax(moved) == speaker and moved[speaker] > np.delete(moved, speaker).max())

    points = np.transpose(measured.landmarks, (1, 0, 2, 3))  # [F, N, 22, 2]
    boxes = np.repeat(np.array([b.as_tuple() for b in scene.face_boxes], np.float64)[None], count, axis=0)
    boxes[~np.isfinite(points).all(axis=(2, 3))] = np.nan
    tracks = Tracks(boxes=boxes, points=points, keypoints5=np.full((count, n, 5, 2), np.nan),
                    counts=np.isfinite(boxes).all(axis=2).sum(axis=1), source="puppets-measure")
    labels = SpeakerLabels(tuple(f"puppet{i}" for i in range(n)),
                           tuple(tuple(map(tuple, person)) for person in scene.speaking_intervals))
    interactivity = score_tracks(tracks, labels, scene.fps, video=f"scene{scene.seed}")
    return _no_nan({
        "seed": scene.seed, "persons": n, "frames": count,
        "lip_own": own, "lip_other": other,
        "binding_moments": moments, "binding_wins": wins,
        "binding": wins / moments if moments else None,
        "interactivity": interactivity.score,
        "interactivity_people": [p.score for p in interactivity.people],
        "interactivity_failure": interactivity.failure,
        "landmarks_missing": float(np.isnan(measured.landmarks).any(axis=(2, 3)).mean()),
    })


def _no_nan(value):
    """NaN (an undefined correlation: a mouth that never moves, no other puppet) -> None, for JSON."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarize_metrics(per_scene: list[dict]) -> dict:
    """Means over puppets and scenes (lip sync, Interactivity), binding pooled over moments."""
    moments = sum(s["binding_moments"] for s in per_scene)
    return _no_nan({
        "scenes": len(per_scene),
        "lip_own": finite_mean([v for s in per_scene for v in s["lip_own"]]),
        "lip_other": finite_mean([v for s in per_scene for v in s["lip_other"]]),
        "binding": sum(s["binding_wins"] for s in per_scene) / moments if moments else None,
        "binding_moments": moments,
        "interactivity": finite_mean([s["interactivity"] for s in per_scene]),
        "interactivity_failed": sum(s["interactivity"] is None for s in per_scene),
        "landmarks_missing": finite_mean([s["landmarks_missing"] for s in per_scene]),
    })


def evaluation_scenes(count: int, persons: int = 2, seed: int = 900_000, frames: int = 49) -> list:
    """Held-out scenes: seeds seed, seed+1, ... (training clips use 53-bit hashed seeds)."""
    from ..dataset import make_scene

    return [make_scene(persons, seed + i, frames=frames) for i in range(count)]


def evaluate_puppets_model(pipe, scenes: Sequence, steps: int = 20, guidance_scale: float = 1.0, seed: int = 0,
                           progress: bool = False, keep_frames: bool = False, reference: str | None = None) -> dict:
    """Generates every scene with `pipe` and scores it (see the module doc). Returns
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


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------

class _State:
    """OUT/recipe_state.json: finished steps (with their wall time) and their results."""

    def __init__(self, out: Path):
        self.path = out / "recipe_state.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"done": {}, "results": {}}

    def done(self, step: str) -> bool:
        return step in self.data["done"]

    def finish(self, step: str, seconds: float, result=None) -> None:
        self.data["done"][step] = round(seconds, 1)
        if result is not None:
            self.data["results"][step] = result
        write_json_atomic(self.path, self.data)


def _make_clips(folder: Path, persons: int, count: int, seed: int, data: dict, progress: bool) -> None:
    from tqdm import tqdm

    from ..dataset import clip_name, clip_seed, make_scene, write_clip

    for index in tqdm(range(count), desc=f"clips ({persons} puppet{'s' if persons > 1 else ''})",
                      disable=not progress):
        target = folder / clip_name(seed, persons, index)
        if (target / "meta.json").is_file():
            continue
        scene = make_scene(persons, clip_seed(seed, persons, index), min_seconds=data["min_seconds"],
                           max_seconds=data["max_seconds"])
        write_clip(scene, target)


def _clip_frames(folders: list[Path], face_weight: float):
    """(clips, weight maps) of clip folders: decoded video.mp4 frames, 1 + face_weight inside face boxes."""
    from ...video.io import read_video

    clips, weights = [], []
    for folder in folders:
        meta = json.loads((folder / "meta.json").read_text())
        frames = read_video(folder / meta["files"]["video"]).frames[: meta["frames"]]
        weight = np.ones(frames.shape[1:3], np.float32)
        for x0, y0, x1, y1 in meta["face_boxes"]:
            weight[int(y0):int(y1), int(x0):int(x1)] += face_weight
        clips.append(frames)
        weights.append(weight)
    return clips, weights


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
        values["mouth_r"].append(_corr(measured.mouth_height, original.mouth_height))
        values["mouth_r_gt"].append(_corr(measured.mouth_height, scene.ground_truth["mouth_height"]))
        motion = [m.landmarks - np.nanmean(m.landmarks, axis=1, keepdims=True) for m in (measured, original)]
        values["landmarks_r"].append(_corr(*motion))
    return {key: float(np.nanmean(v)) for key, v in values.items()} | {"scenes": len(scenes)}


def _step_vae(out: Path, recipe: dict, progress: bool) -> dict:
    from ...training.vae import (
        FrameSet,
        VAETrainSettings,
        estimate_latent_statistics,
        set_latent_statistics,
        train_vae,
    )

    settings = dict(recipe["vae"])
    face_weight = settings.pop("face_weight", 2.0)
    stat_clips = settings.pop("statistics_clips", 16)
    per_set = settings.pop("clips_per_set", None)
    eval_scenes = settings.pop("evaluation_scenes", 4)
    settings = VAETrainSettings(**settings)
    folders = []
    for stage in ("stage1", "stage2"):
        found = sorted(p.parent for p in (out / "clips" / stage).glob("*/meta.json"))
        folders += found[:per_set] if per_set else found
    clips, weights = _clip_frames(folders, face_weight)
    vae = train_vae(FrameSet(clips, weights), out / "vae_train", settings, progress=progress)
    # Statistics from clips of both kinds (every k-th clip): 1 and 2 puppets, whole clips.
    chosen = clips[:: max(1, len(clips) // stat_clips)][:stat_clips]
    mean, std = estimate_latent_statistics(vae, chosen)
    set_latent_statistics(vae, mean, std)
    with atomic_directory(out / "vae") as partial:
        vae.save_pretrained(partial)
    from ..dataset import make_scene

    held_out = [make_scene(2, recipe["evaluation"]["seed"] + 10_000 + i, frames=recipe["evaluation"]["frames"])
                for i in range(eval_scenes)]
    metrics = vae_fidelity(vae, held_out) | {"latents_mean": mean, "latents_std": std,
                                               "parameters": sum(p.numel() for p in vae.parameters())}
    write_json_atomic(out / "vae_metrics.json", metrics)
    return {k: v for k, v in metrics.items() if not k.startswith("latents_")}


def _step_base(out: Path, recipe: dict) -> dict:
    from diffusers import AutoencoderKLWan

    from ...pipeline import AnyTalkerPipeline

    vae = AutoencoderKLWan.from_pretrained(out / "vae")
    model = recipe["model"]
    parts = build_components(vae, model["transformer"], model.get("encoder_seed", 0))
    AnyTalkerPipeline(**parts).save_pretrained_atomic(out / "base", overwrite=True)
    return {"transformer_parameters": sum(p.numel() for p in parts["transformer"].parameters())}


def _step_prepare(out: Path, recipe: dict, progress: bool) -> dict:
    from ...training.examples import ConditionEncoder
    from ...training.prepare import PrepareSettings, prepare_dataset

    pipe = load_pipeline(out / "base")
    encoder = ConditionEncoder(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.image_encoder, pipe.audio_encoder,
                               text_len=pipe.transformer.config.text_len)
    data = recipe["data"]
    settings = PrepareSettings(frames=data["frames"], height=data["tile"], width=2 * data["tile"])
    summary = {}
    for stage in ("stage1", "stage2"):
        src = out / "clips" / stage
        summary[stage] = prepare_dataset(src, out / "data" / stage, settings, shard_size=data.get("shard_size", 64),
                                         encode=PuppetCache(encoder, src), progress=progress)
        if not summary[stage]["samples"]:
            raise RuntimeError(f"prepare made no {stage} samples: {summary[stage]}")
    return summary


def _stage_transformer(run: Path, stage: str) -> Path:
    """A finished training stage's weights: its EMA folder when it kept one."""
    ema = run / stage / "transformer_ema"
    return ema if ema.is_dir() else run / stage / "transformer"


def _train_config(template: dict, out: Path, stage: str, run: Path | None = None, start: Path | None = None) -> dict:
    """`template` pointed at OUT's base pipeline and shards; stages write to `run` (default OUT).
    Stage 2 starts from stage 1's weights; stage 1 from `start` (default: the base transformer)."""
    run = run or out
    config = copy.deepcopy(template)
    config.setdefault("model", {})["source"] = str(out / "base")
    if stage == "stage1" and start is not None:
        config["model"]["transformer"] = str(start)
    if stage == "stage2":
        config["model"]["transformer"] = str(_stage_transformer(run, "stage1"))
    config.setdefault("data", {})["shards"] = str(out / "data" / stage)
    config.setdefault("output", {})["dir"] = str(run / stage)
    return config


def _step_train(out: Path, configs: dict, stage: str, progress: bool, run: Path | None = None,
                start: Path | None = None) -> dict:
    import csv

    import yaml

    from ...training.trainer import Trainer

    run = run or out
    config = _train_config(configs[stage], out, stage, run, start)
    (run / "configs").mkdir(parents=True, exist_ok=True)
    (run / "configs" / f"{stage}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    trainer = Trainer(config, progress=progress)
    trainer.train(resume=True)
    # A resumed run appends the steps it redoes after the checkpoint: the last row of a step counts.
    with open(run / stage / "log.csv", newline="") as handle:
        rows = list({int(r["step"]): r for r in csv.DictReader(handle)}.values())
    losses = [float(r["loss"]) for r in rows]
    tail = max(1, len(losses) // 10)
    return {"steps": trainer.step, "loss_first_10pct": float(np.mean(losses[:tail])),
            "loss_last_10pct": float(np.mean(losses[-tail:])),
            "samples_per_s": float(np.mean([float(r["samples_per_s"]) for r in rows[-tail:]]))}


def _pipeline_with(out: Path, transformer_folder: Path):
    """OUT's base pipeline (VAE, encoders) with the transformer of `transformer_folder`."""
    import torch

    from ...models import AnyTalkerTransformer
    from ...pipeline import AnyTalkerPipeline

    pipe = load_pipeline(out / "base")
    with _quiet_loading():
        transformer = AnyTalkerTransformer.from_pretrained(transformer_folder, dtype=torch.float32).eval()
    pipe = AnyTalkerPipeline(**dict(pipe.components, transformer=transformer))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _export(out: Path, stage: str, target: Path) -> None:
    _pipeline_with(out, _stage_transformer(out, stage)).save_pretrained_atomic(target, overwrite=True)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _step_export(out: Path, recipe: dict, configs: dict) -> dict:
    _export(out, "stage2", out / "puppets-tiny")
    _export(out, "stage1", out / "puppets-tiny-stage1")
    training = {"recipe": recipe, "stage1": configs["stage1"], "stage2": configs["stage2"]}
    write_json_atomic(out / "puppets-tiny" / "training.json", training)
    return {"bytes": _folder_bytes(out / "puppets-tiny")}


def _evaluation_settings(recipe: dict, progress: bool) -> dict:
    settings = recipe["evaluation"]
    return {"steps": settings["steps"], "guidance_scale": settings.get("guidance_scale", 1.0), "progress": progress}


def _held_out_scenes(recipe: dict, persons: int = 2) -> list:
    settings = recipe["evaluation"]
    if persons == 2:
        return evaluation_scenes(settings["scenes"], 2, settings["seed"], settings["frames"])
    other = recipe["generalisation"]
    return evaluation_scenes(other["scenes"], persons, other["seed"], settings["frames"])


def _step_evaluate(out: Path, recipe: dict, progress: bool) -> dict:
    scenes, kwargs = _held_out_scenes(recipe), _evaluation_settings(recipe, progress)
    results = {"ground_truth": evaluate_puppets_model(None, scenes),
               "vae_reconstruction": evaluate_puppets_model(load_pipeline(out / "base"), scenes, reference="vae"),
               "stage1": evaluate_puppets_model(load_pipeline(out / "puppets-tiny-stage1"), scenes, **kwargs),
               "stage2": evaluate_puppets_model(load_pipeline(out / "puppets-tiny"), scenes, **kwargs)}
    write_json_atomic(out / "evaluation.json", results)
    return {name: result["summary"] for name, result in results.items()}


def _step_generalise(out: Path, recipe: dict, progress: bool) -> dict:
    """Scenes with more puppets than training ever showed (recipe `generalisation.persons`)."""
    persons = recipe["generalisation"]["persons"]
    scenes, kwargs = _held_out_scenes(recipe, persons), _evaluation_settings(recipe, progress)
    results = {"persons": persons,
               "ground_truth": evaluate_puppets_model(None, scenes),
               "stage1": evaluate_puppets_model(load_pipeline(out / "puppets-tiny-stage1"), scenes, **kwargs),
               "stage2": evaluate_puppets_model(load_pipeline(out / "puppets-tiny"), scenes, **kwargs)}
    write_json_atomic(out / "generalisation.json", results)
    return {name: (result["summary"] if isinstance(result, dict) else result) for name, result in results.items()}


def _json_once(path: Path, make: Callable[[], dict]) -> dict:
    """The JSON at `path`, made (and written atomically) the first time: resumable evaluations."""
    if not path.is_file():
        write_json_atomic(path, make())
    return json.loads(path.read_text())


def _train_ablation(out: Path, run: Path, change: dict, stages: dict, progress: bool) -> dict:
    """Trains `stages` (configs) into `run`, from the base transformer with `change["transformer"]`
    config overrides when given; returns each stage's training summary."""
    from ...models import AnyTalkerTransformer

    start = None
    if change.get("transformer"):
        start = run / "start_transformer"
        if not (start / "config.json").is_file():
            with _quiet_loading():
                model = AnyTalkerTransformer.from_pretrained(out / "base" / "transformer", **change["transformer"])
            with atomic_directory(start) as partial:
                model.save_pretrained(partial)
    return {stage: _step_train(out, stages, stage, progress, run, start) for stage in stages}


def _step_ablations(out: Path, recipe: dict, configs: dict, progress: bool, say: Callable[[str], None]) -> dict:
    """Each recipe `ablations` entry retrained from the same base, data and step budget with its
    changes (`transformer`: config of the starting transformer, `stage1`/`stage2`: training config
    overrides, `skip_stage2`: stage 1 only, for both stages' steps), into OUT/ablations/NAME, and
    evaluated like the model: on the two-puppet scenes (evaluation.json; with two stages, stage 1
    alone too: evaluation_stage1.json) and the 3-puppet ones (generalisation.json). Finished parts
    are skipped, so a rerun resumes."""
    kwargs = _evaluation_settings(recipe, progress)
    persons = recipe["generalisation"]["persons"]
    summaries = {}
    for name, change in (recipe.get("ablations") or {}).items():
        run = out / "ablations" / name
        stages = {stage: copy.deepcopy(configs[stage]) for stage in ("stage1", "stage2")}
        for stage, config in stages.items():
            _merge(config, change.get(stage) or {})
        if change.get("skip_stage2"):  # the same budget: stage 1 runs stage 2's steps too
            stages["stage1"]["train"]["max_steps"] += stages.pop("stage2")["train"]["max_steps"]
        last = list(stages)[-1]

        def evaluate(stage: str, scene_persons: int) -> dict:
            return evaluate_puppets_model(_pipeline_with(out, _stage_transformer(run, stage)),
                                          _held_out_scenes(recipe, scene_persons), **kwargs)

        def train_and_evaluate() -> dict:
            say(f"[puppets-tiny] ablation {name}: {json.dumps(change)}")
            training = _train_ablation(out, run, change, stages, progress)
            return {"change": change, "training": training, **evaluate(last, 2)}

        summaries[name] = {"two": _json_once(run / "evaluation.json", train_and_evaluate)["summary"]}
        if last == "stage2":
            summaries[name]["stage1"] = _json_once(run / "evaluation_stage1.json", lambda: evaluate("stage1", 2))["summary"]
        summaries[name]["three"] = _json_once(run / "generalisation.json",
                                              lambda: evaluate(last, persons) | {"persons": persons})["summary"]
    return summaries


TABLE_COLUMNS = (("lip_own", "lip sync, own track (r)"), ("lip_other", "lip sync, other tracks (r)"),
                 ("binding", "binding"), ("interactivity", "Interactivity"))


def results_table(results: dict) -> str:
    """Markdown tables of a finished recipe's `evaluate`, `generalise` and `ablations` results."""
    def table(rows: list[tuple[str, dict]]) -> list[str]:
        lines = ["| model | " + " | ".join(title for _, title in TABLE_COLUMNS) + " |",
                 "|---|" + "---:|" * len(TABLE_COLUMNS)]
        for label, summary in rows:
            cells = [summary.get(key) for key, _ in TABLE_COLUMNS]
            lines.append(f"| {label} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
        return lines

    def label(name: str) -> str:
        return "ablation: " + name.replace("_", " ").replace("stage", "stage ")

    main, ablations = results["evaluate"], results.get("ablations", {})
    lines = [f"Held-out two-puppet scenes ({main['stage2']['scenes']}, {main['stage2']['binding_moments']} "
             "one-speaker moments):", ""]
    rows = [("ground-truth renders", main["ground_truth"]), ("renders through the VAE", main["vae_reconstruction"]),
            ("puppets-tiny (stage 1 + stage 2)", main["stage2"]),
            ("its stage 1 alone (puppets-tiny-stage1)", main["stage1"])]
    for name, summary in ablations.items():
        rows.append((label(name), summary["two"]))
        if "stage1" in summary:
            rows.append((f"{label(name)}, its stage 1 alone", summary["stage1"]))
    lines += table(rows)
    stage1, stage2, truth = (main[k]["interactivity"] for k in ("stage1", "stage2", "ground_truth"))
    if stage1 and stage2 and truth:
        lines += ["", f"Interactivity: stage 2 / stage 1 = {stage2 / stage1:.2f}x, stage 2 / ground truth = "
                      f"{stage2 / truth:.2f}"]
    if "generalise" in results:
        other = results["generalise"]
        lines += ["", f"Held-out {other['persons']}-puppet scenes ({other['stage2']['scenes']}; training saw at most 2):",
                  ""]
        lines += table([("ground-truth renders", other["ground_truth"]), ("puppets-tiny", other["stage2"]),
                        ("its stage 1 alone", other["stage1"])]
                       + [(label(name), summary["three"]) for name, summary in ablations.items()])
    return "\n".join(lines) + "\n"


def _step_report(out: Path, results: dict) -> dict:
    """OUT/results.md, and the summaries next to the exported model (puppets-tiny/evaluation.json)."""
    with atomic_write(out / "results.md") as tmp:
        tmp.write_text(results_table(results))
    summary = {key: results[key] for key in ("evaluate", "generalise", "ablations") if key in results}
    write_json_atomic(out / "puppets-tiny" / "evaluation.json", summary)
    return None


def train_puppets_model(out: str | os.PathLike, quick: bool = False, config_dir: str | os.PathLike | None = None,
                        progress: bool = True, until: str | None = None,
                        log: Callable[[str], None] | None = None) -> dict:
    """Runs the recipe into `out` (see the module doc); finished steps are skipped, so a rerun
    resumes. `until` stops after that step. Returns the state (step times and results)."""
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_recipe(config_dir, quick)
    recipe = loaded["recipe"]
    configs = {"stage1": loaded["stage1"], "stage2": loaded["stage2"]}
    settings_path = out / "recipe.json"
    if settings_path.is_file() and json.loads(settings_path.read_text()).get("quick") != quick:
        raise ValueError(f"{out} holds a {'quick' if not quick else 'full'} run; use another folder")
    settings_path.write_text(json.dumps({"quick": quick, **loaded}, indent=1))
    if until is not None and until not in STEPS:
        raise ValueError(f"until must be one of {STEPS}, got {until!r}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(4, os.cpu_count() or 1))))
    say = log or (lambda text: print(text, file=sys.stderr))
    state = _State(out)
    data = recipe["data"]
    actions = {
        "data": lambda: (_make_clips(out / "clips" / "stage1", 1, data["stage1_clips"], data["seed"], data, progress),
                         _make_clips(out / "clips" / "stage2", 2, data["stage2_clips"], data["seed"] + 1, data,
                                     progress), None)[-1],
        "vae": lambda: _step_vae(out, recipe, progress),
        "base": lambda: _step_base(out, recipe),
        "prepare": lambda: _step_prepare(out, recipe, progress),
        "stage1": lambda: _step_train(out, configs, "stage1", progress),
        "stage2": lambda: _step_train(out, configs, "stage2", progress),
        "export": lambda: _step_export(out, recipe, configs),
        "evaluate": lambda: _step_evaluate(out, recipe, progress),
        "generalise": lambda: _step_generalise(out, recipe, progress),
        "ablations": lambda: _step_ablations(out, recipe, configs, progress, say),
        "report": lambda: _step_report(out, state.data["results"]),
    }
    for step in STEPS:
        if not state.done(step):
            start = time.perf_counter()
            say(f"[puppets-tiny] {step} ...")
            result = actions[step]()
            state.finish(step, time.perf_counter() - start, result)
            say(f"[puppets-tiny] {step} done in {time.perf_counter() - start:.0f} s"
                + (f": {json.dumps(result)}" if result else ""))
        if step == until:
            break
    return state.data
