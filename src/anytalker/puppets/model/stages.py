"""The recipe's steps that build the model (1 data ... 7 export; see `recipe`)."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np

from ...utils.atomic import atomic_directory, write_json_atomic
from .bundled import build_components, load_pipeline, pipeline_with
from .cache import PuppetCache
from .evaluation import generation_defaults, vae_fidelity


def merge_overrides(target: dict, overrides: dict) -> None:
    """`overrides` written into `target` in place, nested dicts merged key by key."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_overrides(target[key], value)
        else:
            target[key] = value



def make_clips(folder: Path, persons: int, count: int, seed: int, data: dict, progress: bool) -> None:
    """`count` clips of `persons` puppets into `folder`, `puppets make` style; finished ones kept."""
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


def step_data(out: Path, data: dict, progress: bool) -> None:
    """Single-puppet clips (stage 1) and two-puppet conversations (stage 2) under OUT/clips, and
    the longer conversations of stage 2 under OUT/clips/stage2/continued."""
    make_clips(out / "clips" / "stage1", 1, data["stage1_clips"], data["seed"], data, progress)
    make_clips(out / "clips" / "stage2", 2, data["stage2_clips"], data["seed"] + 1, data, progress)
    # Prepare cuts these into consecutive samples, so all but the first start mid-conversation, as
    # every later window of a long video does (mouths open, heads turned); with only clips that start
    # from the neutral reference, lip sync fell to 0.2 in later windows of a 20 s scene.
    seconds = data.get("continued_seconds", 0.0)
    make_clips(out / "clips" / "stage2" / "continued", 2, data.get("continued_clips", 0), data["seed"] + 2,
               {"min_seconds": seconds, "max_seconds": seconds + 0.05}, progress)


def motion_map(frames: np.ndarray) -> np.ndarray:
    """float32 [H, W] in [0, 1]: how much each pixel moves over a clip (the std over frames of its
    grey level, the plain mean of R, G and B; 16 levels and more = 1). Mouths, eyes and brows light
    up; the still background is 0. (Not `measure.frame_luma`'s BT.709 weights: the bundled VAE was
    trained with this map.)"""
    grey = frames.astype(np.float32).mean(-1)
    return np.clip(grey.std(0) / 16.0, 0.0, 1.0)


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


def step_vae(out: Path, recipe: dict, progress: bool) -> dict:
    """A Wan VAE trained from scratch on the clips, latent statistics re-estimated; OUT/vae."""
    from ...training.vae import (
        FrameSet,
        VAETrainSettings,
        estimate_latent_statistics,
        set_latent_statistics,
        train_vae,
    )
    from ..dataset import make_scene

    settings = dict(recipe["vae"])
    face_weight = settings.pop("face_weight", 2.0)
    motion_weight = settings.pop("motion_weight", 0.0)
    stat_clips = settings.pop("statistics_clips", 16)
    per_set = settings.pop("clips_per_set", None)
    eval_scenes = settings.pop("evaluation_scenes", 4)
    settings = VAETrainSettings(**settings)
    folders = []
    for stage in ("stage1", "stage2"):  # the clips at the top of each set (not stage2/continued: no new looks)
        found = sorted(p.parent for p in (out / "clips" / stage).glob("*/meta.json"))
        folders += found[:per_set] if per_set else found
    clips, weights = _clip_frames(folders, face_weight)
    # The video phase also weighs the pixels that move (what a viewer watches: mouths, eyes, brows).
    video_set = FrameSet(clips, [w + motion_weight * motion_map(c) for c, w in zip(clips, weights)]) \
        if motion_weight else None
    vae = train_vae(FrameSet(clips, weights), out / "vae_train", settings, progress=progress, video_frames=video_set)
    # Statistics from clips of both kinds (every k-th clip): 1 and 2 puppets, whole clips.
    chosen = clips[:: max(1, len(clips) // stat_clips)][:stat_clips]
    mean, std = estimate_latent_statistics(vae, chosen)
    set_latent_statistics(vae, mean, std)
    with atomic_directory(out / "vae") as partial:
        vae.save_pretrained(partial)
    held_out = [make_scene(2, recipe["evaluation"]["seed"] + 10_000 + i, frames=recipe["evaluation"]["frames"])
                for i in range(eval_scenes)]
    metrics = vae_fidelity(vae, held_out) | {"latents_mean": mean, "latents_std": std,
                                               "parameters": sum(p.numel() for p in vae.parameters())}
    write_json_atomic(out / "vae_metrics.json", metrics)
    return {k: v for k, v in metrics.items() if not k.startswith("latents_")}


def step_base(out: Path, recipe: dict) -> dict:
    """The pipeline to train: the trained VAE, random tiny encoders, a fresh transformer; OUT/base."""
    from diffusers import AutoencoderKLWan

    from ...pipeline import AnyTalkerPipeline

    vae = AutoencoderKLWan.from_pretrained(out / "vae")
    model = recipe["model"]
    parts = build_components(vae, model["transformer"], model.get("encoder_seed", 0))
    AnyTalkerPipeline(**parts).save_pretrained_atomic(out / "base", overwrite=True)
    return {"transformer_parameters": sum(p.numel() for p in parts["transformer"].parameters())}


def step_prepare(out: Path, recipe: dict, progress: bool) -> dict:
    """`anytalker prepare` of both clip sets with cached encodings (`PuppetCache`); OUT/data."""
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


def stage_transformer(run: Path, stage: str) -> Path:
    """A finished training stage's weights: its EMA folder when it kept one."""
    ema = run / stage / "transformer_ema"
    return ema if ema.is_dir() else run / stage / "transformer"


def train_config(template: dict, out: Path, stage: str, run: Path | None = None, start: Path | None = None) -> dict:
    """`template` pointed at OUT's base pipeline and shards; stages write to `run` (default OUT).
    Stage 2 starts from stage 1's weights; stage 1 from `start` (default: the base transformer)."""
    run = run or out
    config = copy.deepcopy(template)
    config.setdefault("model", {})["source"] = str(out / "base")
    if stage == "stage1" and start is not None:
        config["model"]["transformer"] = str(start)
    if stage == "stage2":
        config["model"]["transformer"] = str(stage_transformer(run, "stage1"))
    config.setdefault("data", {})["shards"] = str(out / "data" / stage)
    if config["data"].get("pair_shards"):  # stage 2's pairs are stage 1's singles
        config["data"]["pair_shards"] = str(out / "data" / "stage1")
    config.setdefault("output", {})["dir"] = str(run / stage)
    return config


def step_train(out: Path, configs: dict, stage: str, progress: bool, run: Path | None = None,
               start: Path | None = None) -> dict:
    """`anytalker train` of `stage` with its config (`train_config`), resumed when interrupted."""
    import yaml

    from ...training.trainer import Trainer

    run = run or out
    config = train_config(configs[stage], out, stage, run, start)
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


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def step_export(out: Path, recipe: dict, configs: dict, threads: dict) -> dict:
    """OUT/puppets-tiny (stage 2) and OUT/puppets-tiny-stage1 (stage 1 only), diffusers format, each
    with generation_defaults.json (the trained window length and sampling defaults that
    `runner.model_defaults` reads); puppets-tiny/training.json: the recipe, both stage configs and
    `threads`, the torch thread count of each finished step."""
    from ...pipeline.runner import GENERATION_DEFAULTS

    for stage, target in (("stage2", out / "puppets-tiny"), ("stage1", out / "puppets-tiny-stage1")):
        pipeline_with(out / "base", stage_transformer(out, stage)).save_pretrained_atomic(target, overwrite=True)
        write_json_atomic(target / GENERATION_DEFAULTS, generation_defaults(recipe))
    training = {"recipe": recipe, "stage1": configs["stage1"], "stage2": configs["stage2"], "threads": threads}
    write_json_atomic(out / "puppets-tiny" / "training.json", training)
    return {"bytes": _folder_bytes(out / "puppets-tiny")}
