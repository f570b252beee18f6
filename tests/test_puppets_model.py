"""puppets-tiny: the VAE trainer, the recipe (quick mode), and the evaluation metrics (CPU)."""

import csv
import json

import numpy as np
import pytest
import torch
import yaml

from anytalker.puppets.dataset import make_scene
from anytalker.training.vae import (
    FrameSet,
    VAETrainSettings,
    build_vae,
    estimate_latent_statistics,
    reconstruct,
    set_latent_statistics,
    train_vae,
    vae_loss,
)


@pytest.fixture(scope="module")
def solo_clips():
    scenes = [make_scene(1, seed, tile=32, frames=25) for seed in (3, 4)]
    return [s.frames for s in scenes]


def test_vae_training_reduces_the_reconstruction_loss(solo_clips, tmp_path):
    frames = FrameSet(solo_clips)
    settings = VAETrainSettings(dim=4, image_steps=25, image_batch=4, video_steps=2, video_batch=1, video_frames=5,
                                crop=(32, 32), learning_rate=3e-3, warmup_steps=2, checkpoint_every=10)
    batch = frames.batch(np.random.default_rng(123), 4, 1, (32, 32))
    vae = build_vae(4, seed=0)
    with torch.no_grad():
        before = vae_loss(vae, *batch, settings)[1]["l1"]
    trained = train_vae(frames, tmp_path, settings, progress=False, vae=vae)
    with torch.no_grad():
        after = vae_loss(trained, *batch, settings)[1]["l1"]
    assert after < 0.7 * before, (before, after)
    rows = (tmp_path / "vae_log.csv").read_text().splitlines()
    assert len(rows) == 1 + 25 + 2 and rows[1].startswith("image") and rows[-1].startswith("video")
    # Finished: a rerun resumes from the checkpoint at the end and trains nothing more.
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    again = train_vae(frames, tmp_path, settings, progress=False)
    assert len((tmp_path / "vae_log.csv").read_text().splitlines()) == len(rows)
    assert all(torch.equal(state[k], v) for k, v in again.state_dict().items())


def test_latent_statistics_are_re_estimated_and_saved(solo_clips, tmp_path):
    from diffusers import AutoencoderKLWan

    from anytalker.encoders.vae import WAN21_LATENTS_STD, encode_video

    vae = build_vae(4, seed=1).eval()
    mean, std = estimate_latent_statistics(vae, solo_clips)
    assert len(mean) == len(std) == 16 and min(std) > 0
    assert not np.allclose(std, WAN21_LATENTS_STD)  # not the release's numbers
    set_latent_statistics(vae, mean, std)
    pixels = [torch.from_numpy(c).permute(3, 0, 1, 2)[None].float() / 127.5 - 1 for c in solo_clips]
    z = torch.cat([encode_video(vae, p).transpose(0, 1).flatten(1) for p in pixels], dim=1)  # [16, n]
    np.testing.assert_allclose(z.mean(1).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(1, unbiased=False).numpy(), 1, atol=1e-3)
    vae.save_pretrained(tmp_path / "vae")
    loaded = AutoencoderKLWan.from_pretrained(tmp_path / "vae")
    np.testing.assert_allclose(loaded.config.latents_std, std, rtol=1e-6)
    np.testing.assert_allclose(loaded.config.latents_mean, mean, rtol=1e-6, atol=1e-12)
    assert reconstruct(loaded, solo_clips[0]).shape == solo_clips[0].shape
    with pytest.raises(ValueError, match="16 means"):
        set_latent_statistics(vae, mean[:3], std)


def test_scene_metrics_on_the_ground_truth_render():
    from anytalker.puppets.model import scene_metrics, summarize_metrics

    scene = make_scene(2, 900_123, frames=49)
    metrics = scene_metrics(scene.frames, scene)
    assert min(metrics["lip_own"]) > 0.95 and max(metrics["lip_other"]) < 0.5
    assert metrics["binding_moments"] > 0 and metrics["binding"] == 1.0
    assert metrics["interactivity"] is not None and metrics["interactivity"] > 0
    # A frozen video (the reference repeated): no lip sync, no motion.
    frozen = scene_metrics(np.repeat(scene.reference[None], scene.num_frames, axis=0), scene)
    assert frozen["interactivity"] == 0 and frozen["binding"] == 0
    summary = summarize_metrics([metrics, frozen])
    assert set(summary) >= {"lip_own", "lip_other", "binding", "interactivity", "scenes"}


def _render_with_mouths(scene, scale: float):
    """The scene re-rendered with every mouth opening scaled by `scale`: (frames, drawn heights [N, F])."""
    from dataclasses import replace

    from anytalker.puppets.render import render_frame, static_layer

    static = static_layer(scene.background, scene.appearances, scene.tile)
    frames, heights = [], []
    for t in range(scene.num_frames):
        poses = [scene.motion.pose(i, t) for i in range(scene.persons)]
        frame, geometries = render_frame(static, scene.appearances, scene.tile,
                                         [replace(pose, mouth_open=scale * pose.mouth_open) for pose in poses])
        frames.append(frame)
        heights.append([2 * g.mouth[3] for g in geometries])
    return np.stack(frames), np.array(heights).T


def test_mouth_amplitude_ratios_and_background_flicker():
    from anytalker.puppets.model import scene_metrics, summarize_metrics

    scene = make_scene(2, 900_123, frames=49)
    truth = scene_metrics(scene.frames, scene)
    assert truth["amplitude_std_ratio"] == [1.0, 1.0] and truth["amplitude_max_ratio"] == [1.0, 1.0]
    assert truth["flicker"] > 0 and truth["flicker_ratio"] == 1.0
    # Mouths opening half as wide: the drawn heights' std halves exactly, their max by what the
    # closed mouth's height leaves; the pixel measurement reads both back within 0.03.
    frames, drawn = _render_with_mouths(scene, 0.5)
    half = scene_metrics(frames, scene)
    drawn_truth = scene.ground_truth["mouth_height"]
    expected_std = drawn.std(axis=1) / drawn_truth.std(axis=1)
    expected_max = drawn.max(axis=1) / drawn_truth.max(axis=1)
    np.testing.assert_allclose(expected_std, 0.5, atol=1e-6)
    np.testing.assert_allclose(half["amplitude_std_ratio"], expected_std, atol=0.03)
    np.testing.assert_allclose(half["amplitude_max_ratio"], expected_max, atol=0.03)
    assert half["lip_own"] == pytest.approx(truth["lip_own"], abs=0.02)  # the correlation does not see it
    assert half["flicker_ratio"] == 1.0  # only the faces changed
    # A static video: no flicker, no mouth motion.
    frozen = scene_metrics(np.repeat(scene.reference[None], scene.num_frames, axis=0), scene)
    assert frozen["flicker"] == 0 and frozen["flicker_ratio"] == 0 and frozen["amplitude_std_ratio"] == [0.0, 0.0]
    summary = summarize_metrics([truth, half])
    assert summary["amplitude_std_ratio"] == pytest.approx(np.mean([1, 1, *half["amplitude_std_ratio"]]))
    assert summary["flicker_ratio"] == 1.0 and summary["flicker"] == pytest.approx(truth["flicker"])
    # Summaries of older results (no amplitude / flicker keys) still work.
    old = {k: v for k, v in truth.items() if not k.startswith(("amplitude", "flicker", "mouth_"))}
    assert summarize_metrics([old])["flicker_ratio"] is None


def test_model_folders_record_their_generation_defaults(tmp_path):
    from anytalker.pipeline.runner import GENERATION_DEFAULTS, ModelSettings, bundled_puppets_folder, model_defaults

    bundled = json.loads((bundled_puppets_folder() / GENERATION_DEFAULTS).read_text())
    assert bundled == {"max_frames_per_window": 49, "steps": 20, "guidance_scale": 1.0}
    for name in ("puppets-tiny", str(bundled_puppets_folder())):
        defaults = model_defaults(ModelSettings(name))
        assert (defaults["max_frames_per_window"], defaults["steps"], defaults["guidance_scale"]) == (49, 20, 1.0)
    (tmp_path / GENERATION_DEFAULTS).write_text(json.dumps({"max_frames_per_window": 17, "steps": 3, "note": "x"}))
    folder = model_defaults(ModelSettings(str(tmp_path)))
    assert (folder["max_frames_per_window"], folder["steps"], folder["guidance_scale"]) == (17, 3, 4.5)
    assert "note" not in folder
    assert model_defaults(ModelSettings(str(tmp_path / "none")))["max_frames_per_window"] == 81


def test_long_scenes_are_generated_in_the_models_windows():
    """A 4 s scene (97 frames) through the bundled model: windows of its trained 49 frames by
    default (3 windows, 5 frames carried), one window when asked for."""
    from anytalker.puppets.model import load_pipeline
    from anytalker.puppets.model.evaluation import generate_scene_result

    pipe, scene = load_pipeline(), make_scene(2, 900_001, frames=97)
    windowed = generate_scene_result(pipe, scene, steps=1)
    assert windowed.info["max_frames_per_window"] == 49
    assert [(w["start"], w["length"]) for w in windowed.info["windows"]] == [(0, 49), (44, 49), (88, 9)]
    assert windowed.frames.shape == scene.frames.shape
    whole = generate_scene_result(pipe, scene, steps=1, max_frames_per_window=97)
    assert [(w["start"], w["length"]) for w in whole.info["windows"]] == [(0, 97)]


def test_missing_weights_say_how_to_build_them(tmp_path, monkeypatch):
    from anytalker.pipeline import runner
    from anytalker.puppets.model import WeightsMissing, load_pipeline

    with pytest.raises(WeightsMissing, match="model_index.json"):
        load_pipeline(tmp_path)
    monkeypatch.setattr(runner, "bundled_puppets_folder", lambda: tmp_path / "absent")
    with pytest.raises(WeightsMissing, match="anytalker puppets train-model"):
        load_pipeline()


def test_bundled_model_lip_syncs_and_binds_on_held_out_scenes():
    """The shipped puppets-tiny on the first two held-out scenes of its evaluation, with the
    recipe's settings: each mouth follows its own track, not the others', and the speaker's mouth
    is the one that moves (the issue's bars; the full 12-scene numbers are in the README)."""
    from anytalker.puppets.model import evaluate_puppets_model, evaluation_scenes, load_pipeline, load_recipe

    settings = load_recipe()["recipe"]["evaluation"]
    scenes = evaluation_scenes(2, 2, settings["seed"], settings["frames"])
    summary = evaluate_puppets_model(load_pipeline(), scenes, steps=settings["steps"])["summary"]
    assert summary["lip_own"] >= 0.6 and summary["lip_other"] <= 0.2
    assert summary["binding_moments"] >= 5 and summary["binding"] >= 0.9


def test_shipped_recipe_configs_are_valid():
    from anytalker.puppets.model import load_recipe
    from anytalker.training.config import load_config

    for quick in (False, True):
        loaded = load_recipe(quick=quick)
        VAETrainSettings(**{k: v for k, v in loaded["recipe"]["vae"].items()
                            if k in VAETrainSettings.__dataclass_fields__})
        for stage in ("stage1", "stage2"):
            config = load_config(loaded[stage])
            assert config.data.stage == int(stage[-1])
    assert load_config(load_recipe()["stage1"]).data.single_view == "half"


def test_stage_configs_point_at_the_runs_folders(tmp_path):
    from anytalker.puppets.model.stages import train_config

    template = {"data": {"stage": 2, "pair_shards": "runs/puppets/data/stage1"}, "output": {}}
    config = train_config(template, tmp_path, "stage2")
    assert config["data"]["shards"] == str(tmp_path / "data" / "stage2")
    assert config["data"]["pair_shards"] == str(tmp_path / "data" / "stage1")  # stage 2's pairs: stage 1's clips
    assert config["model"]["source"] == str(tmp_path / "base") and config["output"]["dir"] == str(tmp_path / "stage2")
    assert "pair_shards" not in train_config({"data": {"stage": 2}}, tmp_path, "stage2")["data"]


def test_recipe_quick_mode_runs_every_stage(tmp_path):
    """The whole recipe at toy size (~30 s on 2 cores): data, VAE, base, prepare, stage 1, stage 2,
    export, evaluation; a rerun skips every finished step."""
    from anytalker.pipeline import AnyTalkerPipeline
    from anytalker.puppets.model import STEPS, train_puppets_model

    out = tmp_path / "run"
    state = train_puppets_model(out, quick=True, progress=False, log=lambda text: None)
    assert list(state["done"]) == list(STEPS)
    assert state["results"]["prepare"]["stage1"]["samples"] > 0 and state["results"]["prepare"]["stage2"]["samples"] > 0
    assert state["results"]["stage2"]["steps"] == 2
    # Stage 2 also trains on a longer conversation cut into samples that start mid-conversation
    # (clips/stage2/continued); the VAE trains on the top-level clips only.
    assert len(list((out / "clips" / "stage2" / "continued").glob("*/meta.json"))) == 1
    prepared = [json.loads(line) for line in (out / "data" / "stage2" / "clips.jsonl").read_text().splitlines()]
    continued = [entry for entry in prepared if entry["clip"].startswith("continued_")]
    assert len(continued) == 1 and continued[0]["samples"] == 49 // 9
    assert len(prepared) == 3
    pipe = AnyTalkerPipeline.from_pretrained(out / "puppets-tiny")
    for folder in ("puppets-tiny", "puppets-tiny-stage1"):  # the trained clip length: quick mode's 9 frames
        assert json.loads((out / folder / "generation_defaults.json").read_text())["max_frames_per_window"] == 9
    assert pipe.vae.config.latents_std == json.loads((out / "vae" / "config.json").read_text())["latents_std"]
    # The thread count of every step before the export: CPU sums (and so the weights) depend on it.
    threads = json.loads((out / "puppets-tiny" / "training.json").read_text())["threads"]
    assert threads == {step: torch.get_num_threads() for step in STEPS[:STEPS.index("export")]}
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert set(evaluation) == {"ground_truth", "vae_reconstruction", "stage1", "stage2"}
    assert evaluation["ground_truth"]["summary"]["binding"] == 1.0
    stage1 = yaml.safe_load((out / "configs" / "stage1.yaml").read_text())
    assert stage1["data"]["shards"] == str(out / "data" / "stage1")
    stage2 = yaml.safe_load((out / "configs" / "stage2.yaml").read_text())  # 30% of its batches: stage 1's pairs
    assert stage2["data"]["pair_shards"] == str(out / "data" / "stage1") and stage2["data"]["concat_probability"] == 0.3

    generalisation = json.loads((out / "generalisation.json").read_text())
    assert generalisation["persons"] == 3 and len(generalisation["stage2"]["scenes"][0]["lip_own"]) == 3
    # Ablations: same data and steps, only their change differs from the main run.
    masks_off = out / "ablations" / "no_face_masks"
    assert json.loads((masks_off / "stage1" / "transformer_ema" / "config.json").read_text())["use_face_masks"] is False
    assert json.loads((out / "stage1" / "transformer_ema" / "config.json").read_text())["use_face_masks"] is True
    no_pairs = yaml.safe_load((out / "ablations" / "no_pairs" / "configs" / "stage1.yaml").read_text())
    assert no_pairs["data"]["concat_probability"] == 0.0 and stage1["data"]["concat_probability"] == 0.5
    assert no_pairs["train"] == stage1["train"] and no_pairs["data"]["shards"] == stage1["data"]["shards"]
    no_pairs_stage2 = yaml.safe_load((out / "ablations" / "no_pairs" / "configs" / "stage2.yaml").read_text())
    assert no_pairs_stage2["data"]["concat_probability"] == 0.0 and no_pairs_stage2["train"] == stage2["train"]
    with open(out / "ablations" / "no_pairs" / "stage1" / "log.csv") as handle:
        assert {row["kind"] for row in csv.DictReader(handle)} == {"singles"}
    skipped = out / "ablations" / "stage2_skipped"
    assert not (skipped / "stage2").exists()
    assert json.loads((skipped / "evaluation.json").read_text())["training"]["stage1"]["steps"] == 4  # 2 + 2
    assert not (skipped / "evaluation_stage1.json").exists() and (skipped / "generalisation.json").is_file()
    assert set(state["results"]["ablations"]) == {"no_face_masks", "no_pairs", "stage2_skipped"}
    assert set(state["results"]["ablations"]["no_pairs"]) == {"two", "stage1", "three"}
    report = (out / "results.md").read_text()
    for row in ("ground-truth renders", "its stage 1 alone", "ablation: no face masks", "ablation: no pairs",
                "ablation: no pairs, its stage 1 alone", "ablation: stage 2 skipped", "3-puppet scenes"):
        assert row in report
    bundled = json.loads((out / "puppets-tiny" / "evaluation.json").read_text())
    assert bundled["ablations"] == state["results"]["ablations"]
    again = train_puppets_model(out, quick=True, progress=False, log=lambda text: None)
    assert again["done"] == state["done"]
    with pytest.raises(ValueError, match="quick"):
        train_puppets_model(out, quick=False, progress=False, log=lambda text: None)


@pytest.mark.parametrize("temporal_downsample", ["newest", "average"])
def test_video_phase_starts_from_the_image_phase(solo_clips, tmp_path, temporal_downsample):
    """build_vae's temporal initialisation: after image-only training a still video reconstructs
    exactly as its frame does alone (frames are coded independently until the video phase)."""
    settings = VAETrainSettings(dim=4, image_steps=3, image_batch=2, video_steps=0, crop=(32, 32), checkpoint_every=10,
                                temporal_downsample=temporal_downsample)
    vae = train_vae(FrameSet(solo_clips), tmp_path, settings, progress=False)
    still = np.repeat(solo_clips[0][:1], 9, axis=0)
    frame = reconstruct(vae, still[:1])[0]
    video = reconstruct(vae, still)
    assert max(np.abs(video[i].astype(int) - frame.astype(int)).max() for i in range(9)) <= 1


def test_averaging_downsamplers_let_every_frame_of_a_group_into_its_latent(solo_clips):
    """"newest" codes latent frame 1 from video frame 4 alone (frames 1-3 are dropped until the video
    phase learns otherwise); "average" starts with all four frames in it."""
    from anytalker.encoders.vae import encode_video

    clip = torch.from_numpy(solo_clips[0][:5].copy()).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    changed = clip.clone()
    changed[:, :, 1] = -changed[:, :, 1]  # the first frame of latent frame 1's group
    shifts = {}
    for mode in ("newest", "average"):
        vae = build_vae(4, seed=0, temporal_downsample=mode).eval()
        with torch.no_grad():
            z, z_changed = encode_video(vae, clip), encode_video(vae, changed)
        assert torch.equal(z[:, :, 0], z_changed[:, :, 0])  # latent frame 0 is video frame 0
        shifts[mode] = float((z[:, :, 1] - z_changed[:, :, 1]).abs().max())
    assert shifts["newest"] == 0.0 and shifts["average"] > 1e-3, shifts
    with pytest.raises(ValueError, match="temporal_downsample"):
        build_vae(4, temporal_downsample="oldest")
    with pytest.raises(ValueError, match="temporal_downsample"):
        VAETrainSettings(temporal_downsample="mean")


def test_temporal_loss_compares_frame_differences(solo_clips):
    from anytalker.encoders.vae import decode_unclamped

    vae = build_vae(4, seed=0)
    frames = FrameSet(solo_clips)
    video = frames.batch(np.random.default_rng(0), 1, 5, (32, 32))
    image = frames.batch(np.random.default_rng(0), 1, 1, (32, 32))
    plain, weighted = VAETrainSettings(dim=4), VAETrainSettings(dim=4, temporal_weight=3.0)
    with torch.no_grad():
        loss, parts = vae_loss(vae, *video, plain)
        loss_t, parts_t = vae_loss(vae, *video, weighted)
        _, parts_image = vae_loss(vae, *image, weighted)
        reconstruction = decode_unclamped(vae, vae.encode(video[0]).latent_dist.mean)
    expected = float((reconstruction.diff(dim=2) - video[0].diff(dim=2)).abs().mean())
    assert parts_t["temporal"] == pytest.approx(expected, rel=1e-4) and expected > 0
    assert float(loss_t) == pytest.approx(float(loss) + 3.0 * expected, rel=1e-5)
    assert parts_image["temporal"] == 0.0  # one frame: nothing to compare


def test_motion_map_marks_the_pixels_that_move():
    from anytalker.puppets.model.stages import motion_map

    clip = np.full((9, 16, 16, 3), 100, np.uint8)
    clip[::2, 4:8, 4:8] = 160  # a square that blinks every other frame
    clip[:, 10:, 10:] = 30     # a still dark patch
    moving = motion_map(clip)
    assert moving.shape == (16, 16) and moving.dtype == np.float32
    assert np.all(moving[4:8, 4:8] == 1.0) and moving[10:, 10:].max() == 0.0 and moving[0, :4].max() == 0.0
    assert motion_map(clip[:1]).max() == 0.0
