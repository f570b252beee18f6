"""Lip sync: MFCC settings, the syncnet_v2 network and its weight file, offset search on planted
offsets, the 25-fps resampling and crop, and Sync-C* weighting. SyncNet is randomly initialised."""


import numpy as np
import pytest
import torch

from conftest import run_cli

from anytalker.evaluation.sync import (
    VSHIFT,
    SpeakerSync,
    evaluate_sync,
    interval_windows,
    mfcc,
    offset_distances,
    resample_indices,
    speaker_sync,
    sync_c_star,
    sync_scores,
    syncnet_crop,
    syncnet_embeddings,
    window_count,
)
from anytalker.evaluation.syncnet import SyncNet, load_syncnet
from anytalker.evaluation.weights import MissingWeightsError




@pytest.fixture(scope="module")
def syncnet():
    torch.manual_seed(0)
    return SyncNet().eval()


# --- audio features -------------------------------------------------------------------------------

def test_mfcc_is_100_hz_13_coefficients_and_matches_python_speech_features():
    rng = np.random.default_rng(0)
    wave = rng.normal(0, 3000, 16000 + 123)  # int16-scale samples, as SyncNet reads WAVs
    feats = mfcc(wave)
    assert feats.shape == (1 + int(np.ceil((wave.size - 400) / 160)), 13) == (100, 13)
    # Coefficient 0 is the log energy of the (pre-emphasised, rectangular) first frame.
    emphasised = np.append(wave[0], wave[1:] - 0.97 * wave[:-1])
    energy = np.sum(np.abs(np.fft.rfft(emphasised[:400], 512)) ** 2) / 512
    assert feats[0, 0] == pytest.approx(np.log(energy), rel=1e-12)
    assert mfcc(np.zeros(160)).shape == (1, 13)  # shorter than one window: one zero-padded frame
    psf = pytest.importorskip("python_speech_features")
    np.testing.assert_allclose(feats, psf.mfcc(wave, 16000), rtol=1e-10, atol=1e-9)


# --- network and weights --------------------------------------------------------------------------

def test_syncnet_shapes_and_release_key_names(syncnet, tmp_path):
    with torch.inference_mode():
        lips = syncnet.forward_lip(torch.rand(2, 3, 5, 224, 224) * 255)
        audio = syncnet.forward_aud(torch.randn(2, 1, 13, 20))
    assert lips.shape == audio.shape == (2, 1024)
    shapes = {k: tuple(v.shape) for k, v in syncnet.state_dict().items()}
    assert shapes["netcnnaud.0.weight"] == (64, 1, 3, 3) and shapes["netcnnaud.18.weight"] == (512, 256, 5, 4)
    assert shapes["netcnnlip.0.weight"] == (96, 3, 5, 7, 7) and shapes["netcnnlip.18.weight"] == (512, 256, 1, 6, 6)
    assert shapes["netfcaud.3.weight"] == shapes["netfclip.3.weight"] == (1024, 512)
    assert shapes["netcnnlip.19.running_var"] == (512,) and shapes["netfclip.1.running_mean"] == (512,)
    with pytest.raises(ValueError, match=r"\[B, 1, 13, 20\]"):
        syncnet.forward_aud(torch.zeros(1, 1, 13, 19))

    # The public file predates num_batches_tracked; a state dict without it loads.
    state = {k: v for k, v in syncnet.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "syncnet_v2.model")
    loaded = load_syncnet(tmp_path)  # a folder holding syncnet_v2.model works too
    x = torch.randn(1, 1, 13, 20)
    with torch.inference_mode():
        assert torch.equal(loaded.forward_aud(x), syncnet.forward_aud(x))
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "other.model")
    with pytest.raises(ValueError, match="not a syncnet_v2 state dict: 88 missing keys"):
        load_syncnet(tmp_path / "other.model")
    with pytest.raises(MissingWeightsError, match=r"syncnet_v2\.model.*syncnet_python.*--syncnet"):
        load_syncnet(tmp_path / "nowhere" / "syncnet_v2.model")
    with pytest.raises(MissingWeightsError, match="no weight file given. Pass --syncnet"):
        load_syncnet(None)


def test_cli_sync_without_weights_names_the_file(tmp_path):
    code, _, err = run_cli(["eval", "sync", "--video", str(tmp_path / "v.mp4"), "--syncnet",
                            str(tmp_path / "syncnet_v2.model")])
    assert code == 2 and "weight file not found" in err and "syncnet_v2.model" in err and "--syncnet" in err


# --- offsets and scores ---------------------------------------------------------------------------

def test_offset_search_finds_planted_offset_in_features():
    rng = np.random.default_rng(1)
    for audio_delay in (-7, 0, 4, 15):
        z = torch.from_numpy(rng.normal(size=(90, 16)))
        lip = z[30:70]  # window i shows event 30 + i
        audio = z[30 - audio_delay:70 - audio_delay]  # ... heard audio_delay windows later
        dists = offset_distances(lip, audio)
        score = sync_scores(dists)
        assert score.offset == -audio_delay  # positive offset: audio leads
        # At the best offset a window's audio partner is itself (distance ~0: pairwise_distance adds
        # eps 1e-6 per dimension) or, past the ends, a zero vector (distance |lip|), as in syncnet_python.
        inside = (np.arange(40) + audio_delay >= 0) & (np.arange(40) + audio_delay < 40)
        expected = np.where(inside, 4e-6, np.linalg.norm(lip.numpy() + 1e-6, axis=1)).mean()
        assert score.sync_d == pytest.approx(expected, rel=1e-6)
        curve = dists.mean(0)
        assert score.sync_c == pytest.approx(float(curve.median() - curve.min()))


class PlantedSyncNet(torch.nn.Module):
    """A stand-in whose embeddings are a pixel's value over the 5 frames and MFCC coefficient 0 at
    the matching 4 steps: distances are 0 exactly at the planted offset."""

    def forward_lip(self, x):  # [B, 3, 5, 224, 224]
        return x[:, 0, :, 0, 0]

    def forward_aud(self, x):  # [B, 1, 13, 20]
        return x[:, 0, 0, ::4]


def test_windowing_end_to_end_finds_planted_offset():
    rng = np.random.default_rng(2)
    frames, shift = 60, 3  # the audio leads the video by 3 frames
    signal = rng.uniform(0, 255, frames + 20)
    crops = np.zeros((frames, 224, 224, 3), np.uint8)
    crops[:, 0, 0, 0] = np.round(signal[:frames])
    cepstra = np.zeros((4 * frames + 20, 13))
    cepstra[0::4, 0][:frames + 5] = np.round(signal[shift:frames + 5 + shift])  # audio step 4k hears frame k + 3
    samples = frames * 640
    windows = window_count(frames, samples)
    assert windows == frames - 5
    lip, audio = syncnet_embeddings(PlantedSyncNet(), crops, cepstra, windows, batch_size=7)
    assert lip.shape == audio.shape == (windows, 5)
    dists = offset_distances(lip, audio)
    score = sync_scores(dists)
    assert score.offset == shift and score.windows == windows
    # Window i (frames i..i+4) meets the audio window i - 3, which heard it 3 frames earlier; the first
    # 3 windows have no partner (zero padding).
    assert dists[shift:, VSHIFT - shift].max() < 1e-4 and dists[:shift, VSHIFT - shift].min() > 1


def test_sync_c_star_weights_intervals_by_length():
    rng = np.random.default_rng(3)
    windows = 100  # windows at 25 fps: 4 s of video
    dists = torch.from_numpy(rng.uniform(5, 10, (windows, 2 * VSHIFT + 1)))
    dists[40:60, 10] = 0.5  # well synced in windows 40..59 only
    left = speaker_sync("left", dists, [(0.0, 1.0), (1.6, 2.6), (3.9, 4.0)])
    right = speaker_sync("right", dists.flip(1), [(1.0, 1.56)])
    # Interval windows: all five frames inside (t = frame / 25).
    assert [w.tolist() for w in interval_windows([(1.6, 2.6)], windows)] == [list(range(40, 62))]
    assert left.skipped == [{"start": 3.9, "end": 4.0,
                             "reason": "no full 5-frame (0.2 s) SyncNet window inside the interval"}]
    expected = []
    for speaker, d in ((left, dists), (right, dists.flip(1))):
        for item in speaker.intervals:
            idx = interval_windows([(item["start"], item["end"])], windows)[0]
            curve = d[idx].mean(0)
            assert item["sync_c"] == pytest.approx(float(curve.median() - curve.min()))
            expected.append((item["end"] - item["start"], item["sync_c"]))
    assert left.intervals[1]["offset"] == VSHIFT - 10
    assert left.sync_c_star == pytest.approx(sum(w * c for w, c in expected[:2]) / 2.0)
    total = sum(w for w, _ in expected)
    assert sync_c_star([left, right]) == pytest.approx(sum(w * c for w, c in expected) / total)
    assert sync_c_star([SpeakerSync("silent", None, None)]) is None


def test_resampling_to_25_fps_and_crop():
    assert resample_indices(30, 30).tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 22,
                                                 23, 24, 25, 26, 28, 29]
    assert resample_indices(25, 25).tolist() == list(range(25))
    assert resample_indices(16, 16).tolist()[:6] == [0, 1, 1, 2, 3, 3]  # 16 fps (Wan) -> 25 fps repeats frames
    assert len(resample_indices(81, 16)) == 127  # 5.0625 s at 25 fps
    frame = np.zeros((200, 300, 3), np.uint8)
    frame[50:150, 100:200] = (255, 0, 0)  # a red square "face", RGB
    crop = syncnet_crop(frame, 50, 150, 100)
    assert crop.shape == (224, 224, 3)
    # BGR output; the crop spans y 50..190 and x 80..220, so the square fills its top 71% and middle.
    assert tuple(crop[60, 112]) == (0, 0, 255) and tuple(crop[215, 112]) == (0, 0, 0)
    assert tuple(crop[60, 3]) == (0, 0, 0)


def test_evaluate_sync_with_a_random_syncnet(syncnet):
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 255, (12, 96, 128, 3), dtype=np.uint8)
    boxes = np.tile([[[20.0, 20.0, 60.0, 60.0], [70.0, 20.0, 110.0, 60.0]]], (12, 1, 1))
    boxes[3, 1] = np.nan  # not found in one frame: the nearest box is used and counted
    audio = [rng.normal(0, 0.1, 12 * 640).astype(np.float32) for _ in range(2)]
    report = evaluate_sync(syncnet, frames, 25.0, boxes, audio, [[(0.0, 0.36)], []], ["left", "right"])
    left, right = report["speakers"]
    assert left["sync"]["windows"] == 7 and left["intervals"][0]["windows"] == 6  # windows 0..5 end by frame 9
    assert right["filled_frames"] == 1 and left["filled_frames"] == 0
    assert report["sync_c_star"] == pytest.approx(left["intervals"][0]["sync_c"])
    assert report["sync_c"] == pytest.approx((left["sync"]["sync_c"] + right["sync"]["sync_c"]) / 2)
    assert all(np.isfinite([s["sync"]["sync_c"], s["sync"]["sync_d"]]).all() for s in report["speakers"])
