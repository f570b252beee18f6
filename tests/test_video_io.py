"""mp4 write / read / probe round trips and atomic writes."""

import json

import numpy as np
import pytest
import torch

from anytalker.utils.atomic import atomic_directory, atomic_write, write_json_atomic
from anytalker.video import probe_video, read_video, write_video


def smooth_frames(num_frames, height, width):
    """A moving colour gradient: smooth enough for H.264 + 4:2:0 chroma to keep it within a few levels."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = [np.stack([64 + 120 * xx / width + 2 * i, 64 + 120 * yy / height, np.full_like(xx, 100 + i)], -1)
              for i in range(num_frames)]
    return np.stack(frames).round().astype(np.uint8)


def chirp(num_samples, sample_rate, channels=1):
    """Not periodic (a pure tone would hide an offset of whole periods)."""
    t = np.arange(num_samples) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * (150 + 400 * t) * t)
    return np.stack([wave * (1 - 0.5 * c) for c in range(channels)]).astype(np.float32)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_round_trip_with_mono_audio(tmp_path):
    fps, sample_rate = 25, 16000
    frames = smooth_frames(33, 64, 96)
    audio = chirp(int(33 / fps * sample_rate) + 137, sample_rate)[0]  # [samples], a bit longer than the video
    path = write_video(tmp_path / "clip.mp4", frames, fps, audio, sample_rate)

    info = probe_video(path)
    assert info["video"]["codec"] == "h264" and info["video"]["pix_fmt"] == "yuv420p"
    assert (info["video"]["frames"], info["video"]["fps"], info["video"]["width"]) == (33, 25.0, 96)
    assert info["video"]["duration"] == pytest.approx(33 / fps, abs=1 / fps)
    assert info["audio"]["codec"] == "aac" and info["audio"]["channels"] == 1
    assert info["audio"]["samples"] == audio.size  # the mp4 carries the exact length, not rounded to ms

    frames_back, fps_back, audio_back, rate_back = read_video(path)
    assert frames_back.shape == frames.shape and frames_back.dtype == np.uint8 and fps_back == 25.0
    assert np.abs(frames_back.astype(int) - frames).mean() < 1.5
    assert rate_back == sample_rate and audio_back.shape == (1, audio.size) and audio_back.dtype == np.float32
    # AAC is lossy; an offset of even a few samples would make this error ~0.1.
    assert np.abs(audio_back[0] - audio).mean() < 0.003


def test_stereo_long_audio_float_frames_odd_size(tmp_path):
    fps, sample_rate = 24, 48000
    video = torch.linspace(-1, 1, 5 * 31 * 45 * 3).reshape(5, 31, 45, 3)  # float [-1, 1], odd H and W
    audio = chirp(2 * sample_rate + 1, sample_rate, channels=2)  # 2 s of sound for 0.21 s of video
    path = write_video(tmp_path / "odd.mp4", video, fps, torch.from_numpy(audio), sample_rate)

    data = read_video(path)
    assert data.frames.shape == (5, 32, 46, 3)  # padded to even by edge replication
    expected = np.round((video.numpy() + 1) * 127.5)
    assert np.abs(data.frames[:, :31, :45].astype(float) - expected).mean() < 3
    assert np.abs(data.frames[:, 31].astype(int) - data.frames[:, 30]).mean() < 3  # the replicated row
    assert data.audio.shape == audio.shape  # audio is never cut to the video's length
    assert np.abs(data.audio - audio).mean() < 0.003
    info = probe_video(path)
    assert info["audio"]["duration"] == pytest.approx(audio.shape[1] / sample_rate, abs=1e-9)
    assert info["duration"] == pytest.approx(2.0, abs=1 / fps) and info["video"]["frames"] == 5


def test_video_only(tmp_path):
    frames = smooth_frames(4, 32, 32)
    path = write_video(tmp_path / "silent.mp4", iter(frames), 30)  # any iterable of frames
    data = read_video(path)
    assert data.audio is None and data.sample_rate is None and data.frames.shape == frames.shape
    assert probe_video(path)["audio"] is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(frames=np.zeros((0, 8, 8, 3), np.uint8)), "no frames"),
    (dict(frames=np.zeros((2, 8, 8), np.uint8)), r"\[H, W, 3\]"),
    (dict(frames=np.zeros((2, 8, 8, 3), np.int32)), "uint8 or float"),
    (dict(audio=np.zeros(100, np.float32), sample_rate=12345), "sample rate 12345"),
    (dict(audio=np.zeros((3, 100), np.float32), sample_rate=16000), "channels"),
    (dict(fps=0), "fps"),
])
def test_write_video_validation(tmp_path, kwargs, message):
    args = dict(frames=np.zeros((2, 8, 8, 3), np.uint8), fps=25) | kwargs
    with pytest.raises(ValueError, match=message):
        write_video(tmp_path / "bad.mp4", **args)
    assert list(tmp_path.iterdir()) == []


def test_crash_mid_write_leaves_nothing(tmp_path):
    frames = smooth_frames(6, 32, 32)

    def crashing():
        yield from frames[:3]
        raise RuntimeError("renderer died")

    target = tmp_path / "out" / "clip.mp4"
    with pytest.raises(RuntimeError, match="renderer died"):
        write_video(target, crashing(), 25, chirp(16000, 16000), 16000)
    assert not target.exists() and leftovers(target.parent) == []

    # An existing file survives a failed rewrite untouched.
    write_video(target, frames, 25)
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        write_video(target, crashing(), 25)
    assert target.read_bytes() == before and leftovers(target.parent) == []


def test_atomic_write(tmp_path):
    target = tmp_path / "sub" / "state.json"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".json" and tmp.name.startswith(".")
        tmp.write_text("{}")
        assert not target.exists()  # nothing at the destination until the block succeeds
    assert target.read_text() == "{}"

    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as tmp:
            tmp.write_text('{"half": ')
            raise KeyboardInterrupt
    assert target.read_text() == "{}" and leftovers(target.parent) == []

    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_write(tmp_path / "never.bin"):
            pass
    assert not (tmp_path / "never.bin").exists()


def test_write_json_atomic_and_atomic_directory(tmp_path):
    target = write_json_atomic(tmp_path / "a" / "record.json", {"x": [1, 2]})
    assert json.loads(target.read_text()) == {"x": [1, 2]} and leftovers(target.parent) == []

    folder = tmp_path / "model"
    with atomic_directory(folder) as partial:
        (partial / "config.json").write_text("{}")
        assert not folder.exists()  # nothing at the destination until the block succeeds
    with pytest.raises(RuntimeError, match="save failed"):
        with atomic_directory(folder) as partial:
            (partial / "weights.bin").write_bytes(b"half")
            raise RuntimeError("save failed")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]  # the old folder, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "model"]  # no partial folder left
    with atomic_directory(folder) as partial:
        (partial / "weights.bin").write_bytes(b"new")
    assert sorted(p.name for p in folder.iterdir()) == ["weights.bin"]  # replaced as a whole
