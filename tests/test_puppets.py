"""The puppet world: determinism, variety, lip sync to the own voice, listening, measurement, `puppets make`."""

import argparse
import json
import math

import numpy as np
import pytest

from anytalker.audio import load_audio
from anytalker.encoders.wav2vec import video_frame_count
from anytalker.puppets import (
    MOUTH_LAG_FRAMES,
    Pose,
    agreement,
    clip_name,
    clip_seed,
    espeak_available,
    frame_envelope,
    make_scene,
    measure_clip,
    measure_frames,
    sample_appearance,
    sample_background,
    sample_voice,
    write_clip,
)
from anytalker.puppets.appearance import (
    DARK_LUMA,
    SKIN_LUMA,
    WHITE_LUMA,
    luma,
    with_luma,
)
from anytalker.cli.puppets import add_parser as add_puppets_parser
from anytalker.puppets.dataset import GROUND_TRUTH
from anytalker.puppets.render import render_frame, static_layer
from anytalker.video.io import probe_video, read_video, write_video

FPS, RATE = 24, 16000


@pytest.fixture(scope="module")
def duo():
    return make_scene(2, seed=7, frames=73)  # ~3 s


@pytest.fixture(scope="module")
def solo():
    return make_scene(1, seed=3, frames=73)


def _corr(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, float), np.asarray(b, float))[0, 1])


def _activity(landmarks, mask) -> float:
    """Mean frame-to-frame displacement (px) of the 22 eye/brow points over consecutive masked frames."""
    step = np.linalg.norm(np.diff(landmarks, axis=0), axis=-1).mean(axis=-1)
    both = mask[1:] & mask[:-1]
    return float(step[both].mean())


def test_same_seed_same_scene_bit_for_bit(duo):
    again = make_scene(2, seed=7, frames=73)
    assert np.array_equal(again.frames, duo.frames)
    assert np.array_equal(again.tracks, duo.tracks)
    assert again.caption == duo.caption
    assert again.speaking_intervals == duo.speaking_intervals
    for name in GROUND_TRUTH:
        assert np.array_equal(again.ground_truth[name], duo.ground_truth[name]), name


def test_scene_shapes_timing_and_neutral_first_frame(duo):
    assert duo.frames.shape == (73, 64, 128, 3) and duo.frames.dtype == np.uint8
    assert duo.tracks.shape == (2, 73 * RATE // FPS) and duo.tracks.dtype == np.float32
    # The audio gives back exactly the frame count (the release's 4n+1 rule) and the mix is the limited sum.
    assert video_frame_count(duo.tracks.shape[1], RATE, FPS) == 73
    assert np.abs(duo.mix).max() <= 1.0
    # Frame 0 is the reference image: everyone silent, eyes open, looking ahead.
    assert np.array_equal(duo.frames[0], duo.reference)
    gt = duo.ground_truth
    assert np.all(gt["mouth_open"][:, 0] == 0) and np.all(gt["eye_open"][:, 0] == 1) and np.all(gt["yaw"][:, 0] == 0)
    # Boxes: whole pixels, left to right, each holding its head in every frame.
    assert duo.face_boxes[0].x1 <= duo.face_boxes[1].x0
    for box, per_frame in zip(duo.face_boxes, gt["face_boxes"]):
        assert per_frame[:, 0].min() >= box.x0 and per_frame[:, 1].min() >= box.y0
        assert per_frame[:, 2].max() <= box.x1 and per_frame[:, 3].max() <= box.y1


def test_script_every_puppet_speaks_with_exact_intervals(duo):
    for person, track in enumerate(duo.tracks):
        intervals = duo.speaking_intervals[person]
        assert intervals, f"puppet {person} never speaks"
        assert intervals[0][0] >= 0.25  # silent start: frame 0 is neutral
        inside = np.zeros(track.size, bool)
        for start, end in intervals:  # seconds rounded to 0.1 ms: within 2 samples
            inside[round(start * RATE) - 2 : round(end * RATE) + 2] = True
        # Sound exactly where the script says, silence elsewhere.
        assert np.abs(track[~inside]).max() == 0.0
        assert np.abs(track[inside]).max() == pytest.approx(0.5, abs=1e-3)
        times = np.arange(duo.num_frames) / FPS
        expected = np.zeros(duo.num_frames, bool)
        for start, end in intervals:
            expected |= (times >= start) & (times < end)
        assert np.array_equal(duo.ground_truth["speaking"][person], expected)


def test_variety_across_seeds():
    appearances = [sample_appearance(np.random.default_rng(seed)) for seed in range(12)]
    for field in ("head_shape", "skin_name", "hair_style", "hair_name", "brow_name", "shirt_name"):
        assert len({getattr(a, field) for a in appearances}) >= 4, field
    assert sum(a.glasses is not None for a in appearances) >= 1
    images = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        app, background = sample_appearance(rng), sample_background(rng)
        images.append(render_frame(static_layer(background, [app], 64), [app], 64, [Pose()])[0].astype(float))
    differences = [np.abs(a - b).mean() for i, a in enumerate(images) for b in images[i + 1:]]
    assert min(differences) > 10  # mean |difference| per channel, of 255
    pitches = [sample_voice(np.random.default_rng(seed)).f0 for seed in range(12)]
    assert max(pitches) / min(pitches) > 1.8
    assert 85 <= min(pitches) and max(pitches) <= 280


def test_colour_rules_hold_for_many_puppets():
    """The measurement's premises: skin luma in range, decorations isoluminant with the skin."""
    assert luma(with_luma((220, 40, 40), 120.0)) == pytest.approx(120.0, abs=0.4)
    for seed in range(40):
        app = sample_appearance(np.random.default_rng(seed))
        skin = luma(app.skin)
        assert SKIN_LUMA[0] - 0.5 <= skin <= SKIN_LUMA[1] + 0.5
        for colour in (app.nose, app.blush, app.glasses_color):
            if colour is not None:
                assert luma(colour) == pytest.approx(skin, abs=0.6)
        for colour in (app.brow, app.pupil, app.cavity):
            assert luma(colour) == pytest.approx(DARK_LUMA, abs=0.6)
    assert WHITE_LUMA - SKIN_LUMA[1] > 60 and SKIN_LUMA[0] - DARK_LUMA > 60


def test_mouth_follows_own_voice_not_the_others(duo, tmp_path):
    # From the files a trainer reads: each wav (decoded by load_audio) against the pixels of the mp4.
    write_clip(duo, tmp_path / "clip")
    envelopes = [frame_envelope(load_audio(tmp_path / "clip" / f"audio_{i}.wav"), duo.num_frames, FPS, RATE)
                 for i in range(2)]
    measured = measure_clip(tmp_path / "clip").mouth_height
    lag = MOUTH_LAG_FRAMES
    for person in range(2):
        mouth = measured[person, lag:]
        own = _corr(mouth, envelopes[person][:-lag])
        other = _corr(mouth, envelopes[1 - person][:-lag])
        assert own >= 0.95, (person, own)
        assert other < 0.3, (person, other)
        # The designed lag is the best one.
        best = max(range(4), key=lambda k: _corr(measured[person, k:], envelopes[person][: duo.num_frames - k]))
        assert best == lag


def test_listeners_move_eyes_and_brows_more_than_idle_single_puppets():
    listening, idle = [], []
    for seed in range(3):
        duo = make_scene(2, seed=seed, frames=73)
        solo = make_scene(1, seed=seed, frames=73)
        gt, gt1 = duo.ground_truth, solo.ground_truth
        assert not gt1["listening"].any()  # a puppet alone never listens
        for person in range(2):
            assert gt["listening"][person].any()
            assert not (gt["listening"][person] & gt["speaking"][person]).any()
            listening.append(_activity(gt["landmarks"][person], gt["listening"][person]))
        # Idle: silent for 0.4 s (the speaking bob has settled), not yet hearing the next phrase
        # (the envelope window reaches 1 frame ahead).
        silent = ~gt1["speaking"][0]
        settled = (np.convolve(silent, np.ones(10), mode="full")[: silent.size] == 10) & (gt1["envelope"][0] == 0)
        idle.append(_activity(gt1["landmarks"][0], settled))
        # Idle means idle: no brow raises, no head turns (only blinks, sway, breathing).
        assert gt1["brow_raise"][0][settled].max() < 0.05
        assert np.abs(gt1["yaw"][0]).max() < 0.1  # listeners turn to 0.85
    assert np.mean(listening) > 2.5 * np.mean(idle), (listening, idle)


def test_listeners_turn_toward_the_speaker(duo):
    gt = duo.ground_truth
    for person, toward in ((0, 1.0), (1, -1.0)):  # the left puppet looks right, the right one left
        listening = gt["listening"][person]
        late = np.convolve(listening, np.ones(5), mode="full")[: listening.size] == 5  # head had time to turn
        assert np.mean(np.sign(gt["yaw"][person][late]) == toward) > 0.9


def test_measurement_matches_ground_truth_on_rendered_frames(duo, solo):
    for scene in (duo, solo):
        result = agreement(measure_frames(scene.frames, scene.face_boxes), scene.ground_truth)
        assert result["missing"] == 0
        assert min(result["mouth_r_per_puppet"]) >= 0.99
        assert min(result["landmarks_r_per_puppet"]) >= 0.95
        assert result["mouth_mae_px"] < 0.1 and result["landmarks_mae_px"] < 0.15


def test_measurement_matches_ground_truth_through_h264(duo, tmp_path):
    write_video(tmp_path / "video.mp4", duo.frames, FPS, duo.mix, RATE)  # crf 18, as generated videos
    result = agreement(measure_frames(read_video(tmp_path / "video.mp4").frames, duo.face_boxes),
                       duo.ground_truth)
    assert result["mouth_r"] >= 0.99
    assert result["landmarks_r"] >= 0.95
    assert result["landmarks_mae_px"] < 0.3


def _run_cli(argv) -> int:
    parser = argparse.ArgumentParser(prog="anytalker")
    add_puppets_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_make_writes_the_documented_layout(tmp_path, capsys):
    out = tmp_path / "set"
    argv = ["puppets", "make", str(out), "--clips", "2", "--persons", "2", "--seed", "5", "--max-seconds", "2.1",
            "--quiet"]
    assert _run_cli(argv) == 0
    folders = sorted(p.name for p in out.iterdir())
    assert folders == [clip_name(5, 2, 0), clip_name(5, 2, 1)]
    folder = out / folders[1]
    assert sorted(p.name for p in folder.iterdir()) == ["audio_0.wav", "audio_1.wav", "ground_truth.npz",
                                                       "meta.json", "reference.png", "video.json", "video.mp4"]
    meta = json.loads((folder / "meta.json").read_text())
    sidecar = json.loads((folder / "video.json").read_text())  # what `anytalker prepare` reads
    assert sidecar == {"caption": meta["caption"], "audio": meta["files"]["audio"],
                       "speaking": meta["speaking_intervals"], "boxes": meta["face_boxes"]}
    frames = meta["frames"]
    assert frames == 49 and meta["persons"] == 2 and (meta["height"], meta["width"]) == (64, 128)
    assert meta["seed"] == clip_seed(5, 2, 1)
    for key in ("caption", "face_boxes", "speaking_intervals", "turns", "script", "landmarks", "puppets", "files"):
        assert meta[key], key
    assert len(meta["face_boxes"]) == 2 and all(len(box) == 4 for box in meta["face_boxes"])
    info = probe_video(folder / "video.mp4")
    assert info["video"]["frames"] == frames and (info["video"]["width"], info["video"]["height"]) == (128, 64)
    assert info["audio"]["sample_rate"] == RATE and info["audio"]["samples"] == meta["num_samples"]
    for name in meta["files"]["audio"]:
        wave = load_audio(folder / name)  # passes the loader's checks (not silent, 16 kHz mono)
        assert wave.shape == (meta["num_samples"],)
    with np.load(folder / "ground_truth.npz") as data:
        assert sorted(data.files) == sorted(GROUND_TRUTH)
        for name in data.files:
            assert list(data[name].shape) == meta["ground_truth"][name]["shape"]
        assert data["landmarks"].shape == (2, frames, 22, 2)
    # The clip is make_scene(persons, its seed): same reference image, same intervals.
    from PIL import Image
    scene = make_scene(2, meta["seed"], max_seconds=2.1)
    assert np.array_equal(np.asarray(Image.open(folder / "reference.png")), scene.reference)
    assert meta["speaking_intervals"] == [[list(iv) for iv in ivs] for ivs in scene.speaking_intervals]
    # A second run finds the clips done and leaves them alone.
    stamp = (folder / "meta.json").stat().st_mtime_ns
    assert _run_cli(argv[:-1]) == 0
    assert "2 existed" in capsys.readouterr().out
    assert (folder / "meta.json").stat().st_mtime_ns == stamp
    assert _run_cli(["puppets", "measure", str(folder)]) == 0


def test_make_rejects_bad_arguments(tmp_path, capsys):
    assert _run_cli(["puppets", "make", str(tmp_path / "x"), "--clips", "0"]) == 2
    assert _run_cli(["puppets", "make", str(tmp_path / "x"), "--tile", "40"]) == 2
    assert _run_cli(["puppets", "make", str(tmp_path / "x"), "--min-seconds", "3", "--max-seconds", "3.01"]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(ValueError, match="persons"):
        make_scene(5, 0)


def test_three_and_four_puppets_all_take_turns():
    for persons in (3, 4):
        scene = make_scene(persons, seed=11)
        assert scene.width == 64 * persons and math.isclose(scene.duration * FPS, scene.num_frames, abs_tol=1)
        assert all(scene.speaking_intervals), persons
        assert scene.ground_truth["listening"].any(axis=1).all()


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed (Debian package espeak-ng)")
def test_espeak_voices():
    scene = make_scene(2, seed=1, frames=73, voice="espeak")
    assert all(scene.speaking_intervals)
    assert _corr(scene.ground_truth["mouth_open"][0, MOUTH_LAG_FRAMES:],
                 scene.ground_truth["envelope"][0, :-MOUTH_LAG_FRAMES]) > 0.99


def test_package_names_resolve_and_the_cli_module_stays_light():
    import subprocess
    import sys

    from anytalker import puppets

    for name in puppets.__all__:
        assert getattr(puppets, name) is not None
    # `anytalker --help` imports anytalker.cli.puppets: that must not pull in torch (seconds of start-up).
    code = "import sys, anytalker.cli.puppets; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
