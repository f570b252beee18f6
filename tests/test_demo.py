"""`anytalker demo`: the bundled puppets-tiny model animates a fresh scene end to end (CPU)."""

import argparse
import json
import wave

import numpy as np
import pytest
from PIL import Image

from anytalker.cli.demo import add_parser as add_demo_parser
from anytalker.pipeline.runner import bundled_puppets_folder
from anytalker.puppets.demo import METRIC_KEYS, demo_files, run_demo


def _parser():
    parser = argparse.ArgumentParser(prog="anytalker")
    add_demo_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_bundled_weights_are_shipped_and_small():
    weights = bundled_puppets_folder()
    assert (weights / "model_index.json").is_file(), (
        f"bundled puppets-tiny weights missing at {weights}: `anytalker puppets train-model OUT` builds them")
    size = sum(p.stat().st_size for p in weights.rglob("*") if p.is_file())
    assert size <= 40 * 2**20


def test_demo_writes_every_documented_file(tmp_path, capsys):
    from anytalker.video.io import read_video

    out = tmp_path / "out" / "demo.mp4"
    args = _parser().parse_args(["demo", "--out", str(out), "--seed", "5", "--steps", "2", "--seconds", "1.6"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "seed 5" in printed and "generated" in printed and "ground_truth" in printed
    assert "mouth std" in printed and "mouth max" in printed and "flicker" in printed
    assert "1 window of <= 49 frames" in printed  # the model's trained window (generation_defaults.json)

    files = demo_files(out, 2)
    for path in files.values():
        assert path.is_file() and path.stat().st_size > 0, path
    metrics = json.loads(files["metrics"].read_text())
    for name in ("generated", "ground_truth"):
        assert set(METRIC_KEYS) <= set(metrics[name])
        assert len(metrics[name]["lip_own"]) == 2
    assert metrics["seed"] == 5 and metrics["frames"] == 41
    assert metrics["ground_truth"]["binding"] == 1.0
    truth = metrics["ground_truth"]
    assert truth["amplitude_std_ratio"] == [1.0, 1.0] and truth["amplitude_max_ratio"] == [1.0, 1.0]
    assert truth["flicker_ratio"] == 1.0 and metrics["generated"]["flicker"] >= 0
    assert metrics["generated"]["flicker_truth"] == truth["flicker"]
    assert (metrics["max_frames_per_window"], metrics["windows"]) == (49, 1)

    stacked, alone = read_video(files["video"]), read_video(files["generated"])
    assert stacked.frames.shape == (41, 128, 128, 3) and alone.frames.shape == (41, 64, 128, 3)
    assert stacked.audio is not None
    assert np.asarray(Image.open(files["reference"])).shape == (64, 128, 3)
    for i in range(2):
        with wave.open(str(files[f"audio_{i}"])) as handle:
            assert handle.getframerate() == 16000 and handle.getnframes() == 41 * 16000 // 24
    script = json.loads(files["script"].read_text())
    assert len(script["speaking_intervals"]) == 2 and script["script"]
    assert all(p["speaker"] in (0, 1) for p in script["script"])
    boxes = json.loads(files["boxes"].read_text())
    assert len(boxes["face_boxes"]) == 2 and boxes["face_boxes"][0][0] < boxes["face_boxes"][1][0]


def test_demo_same_seed_same_scene_and_single_puppet(tmp_path):
    first = run_demo(tmp_path / "a.mp4", persons=1, seed=11, steps=1, seconds=1, quiet=True, max_frames_per_window=9)
    assert (first["max_frames_per_window"], first["windows"]) == (9, 5)  # 25 frames: an explicit window is kept
    second = run_demo(tmp_path / "b.mp4", persons=1, seed=11, steps=1, seconds=1, quiet=True, max_frames_per_window=9)
    assert first["generated"]["lip_own"] == second["generated"]["lip_own"]
    assert first["generated"]["binding"] is None  # one puppet: no binding to check
    assert (tmp_path / "a.audio_0.wav").is_file() and not (tmp_path / "a.audio_1.wav").exists()


def test_demo_without_weights_says_how_to_build_them(tmp_path, capsys):
    args = _parser().parse_args(["demo", "--out", str(tmp_path / "d.mp4"), "--model", str(tmp_path / "none")])
    assert args.func(args) == 2
    assert "model_index.json" in capsys.readouterr().err
    assert not (tmp_path / "d.mp4").exists()


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--seconds", "-1"]])
def test_demo_rejects_bad_settings(argv, capsys):
    args = _parser().parse_args(["demo", *argv])
    assert args.func(args) == 2
    assert "error" in capsys.readouterr().err
