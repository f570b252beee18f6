"""anytalker.audio: decoding, alignment, mixing, voice activity, on generated and real files."""

import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from anytalker.audio import (
    SILENCE_PEAK,
    AudioError,
    align_tracks,
    load_audio,
    mix_tracks,
    normalize_loudness,
    speaking_intervals,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
EXAMPLES = SHARED / "examples"
BENCHMARK = SHARED / "interactiveeyes"
needs_examples = pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"real example inputs not found at {EXAMPLES}")
needs_benchmark = pytest.mark.skipif(not BENCHMARK.is_dir(), reason=f"InteractiveEyes inputs not found at {BENCHMARK}")

RATE = 16000


def chirp(rate: int, seconds: float = 1.0, amplitude: float = 0.5, f0: float = 200.0, f1: float = 3000.0):
    """A linear chirp: unambiguous in time (unlike a pure tone), so any shift of the decoded audio shows."""
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds)))).astype(np.float32)


def write_audio(path: Path, codec: str, rate: int, channels: np.ndarray, with_video: bool = False) -> Path:
    """Encodes [channels, n] float samples with PyAV (optionally next to a black video stream)."""
    with av.open(str(path), "w") as container:
        if with_video:
            video = container.add_stream("libx264", rate=25)
            video.width = video.height = 32
            video.pix_fmt = "yuv420p"
        stream = container.add_stream(codec, rate=rate, layout="stereo" if len(channels) == 2 else "mono")
        fmt = stream.codec_context.codec.audio_formats[0]
        for start in range(0, channels.shape[1], 1024):
            chunk = channels[:, start : start + 1024]
            data = chunk if fmt.is_planar else chunk.T.reshape(1, -1)
            if fmt.name.startswith("s16"):
                data = (data * 32767).round().astype(np.int16)
            elif fmt.name.startswith("s32"):
                data = (data * 2**31).round().clip(-(2**31), 2**31 - 1).astype(np.int32)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt.name, layout=stream.layout.name)
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if with_video:
            for index in range(int(channels.shape[1] / rate * 25)):
                picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
                picture.pts = index
                for packet in video.encode(picture):
                    container.mux(packet)
            for packet in video.encode():
                container.mux(packet)
    return path


# --- decoding ---------------------------------------------------------------------------------

# (file, codec, source rate, channels, video, max |error| vs the analytic chirp, RMS gain range)
FORMATS = [
    ("tone.wav", "pcm_s16le", 44100, 2, False, 2e-3, (0.995, 1.005)),
    ("tone.flac", "flac", 48000, 1, False, 2e-3, (0.995, 1.005)),
    # ffmpeg's libmp3lame round trip measures a gain of 0.950 whatever the input sample format.
    ("tone.mp3", "libmp3lame", 44100, 2, False, None, (0.93, 1.01)),
    ("tone.m4a", "aac", 48000, 1, False, None, (0.97, 1.03)),
    ("clip.mp4", "aac", 44100, 2, True, None, (0.97, 1.03)),
]


@pytest.mark.parametrize("name,codec,rate,channels,video,max_error,gain_range", FORMATS, ids=[f[0] for f in FORMATS])
def test_decode_formats(tmp_path, name, codec, rate, channels, video, max_error, gain_range):
    source = chirp(rate)
    path = write_audio(tmp_path / name, codec, rate, np.repeat(source[None], channels, 0), with_video=video)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    # 1.000 s in, 1.000 s out: the mp3 encoder delay and AAC priming/padding are removed.
    assert abs(wave.size - RATE) <= 16, wave.size
    reference = chirp(RATE)
    inner = slice(400, RATE - 400)  # 25 ms edges: resampling an abrupt onset rings there
    gain = np.sqrt(np.mean(wave[inner] ** 2) / np.mean(reference[inner] ** 2))
    assert gain_range[0] <= gain <= gain_range[1], gain
    # In time and in shape: correlation at zero lag (a shift of 1 ms at 3 kHz would ruin it).
    correlation = np.corrcoef(wave[inner], reference[inner])[0, 1]
    assert correlation > 0.99, correlation
    if max_error is not None:  # lossless: sample by sample (16-bit quantisation + soxr HQ)
        assert np.abs(wave[inner] - reference[inner]).max() < max_error


def test_stereo_44k_downmixes_to_mono_16k(tmp_path):
    left, right = chirp(44100, 1.5, 0.6), chirp(44100, 1.5, 0.2, f0=1000, f1=1000)
    wave = load_audio(write_audio(tmp_path / "stereo.wav", "pcm_s16le", 44100, np.stack([left, right])))
    expected = (chirp(RATE, 1.5, 0.6) + chirp(RATE, 1.5, 0.2, f0=1000, f1=1000)) / 2  # channel mean
    assert wave.shape == (24000,)
    assert np.abs(wave[400:-400] - expected[400:-400]).max() < 2e-3


@needs_examples
@pytest.mark.parametrize("name", ["1p-0.wav", "2p-0-left.wav", "2p-0-right.wav", "2p-1-left.wav", "2p-1-right.wav"])
def test_real_example_tracks(name):
    path = EXAMPLES / "audios" / name
    reference, rate = sf.read(path, dtype="float32", always_2d=True)  # an independent decoder
    wave = load_audio(path)
    # librosa.load's length rule (MultiTalk's loader): ceil(n * 16000 / rate).
    assert wave.size == -(-reference.shape[0] * RATE // rate)
    assert abs(wave.size / RATE - reference.shape[0] / rate) < 1e-4
    native = load_audio(path, sample_rate=rate)  # no resampling: exactly the channel mean
    np.testing.assert_array_equal(native, reference.mean(axis=1))
    # Level kept: speech energy lies below 8 kHz, so the RMS survives 48/24 -> 16 kHz (peaks need not).
    assert abs(np.sqrt(np.mean(wave**2) / np.mean(native**2)) - 1) < 0.01


@needs_examples
def test_official_batch_tracks_load():
    batch = json.loads((EXAMPLES / "official_batch.json").read_text())
    for task in batch.values():
        waves = [load_audio(EXAMPLES / path) for path in task["audio_list"]]
        aligned = align_tracks(waves, "pad")
        # The release's two-person tracks are already padded to a common length (pad mode).
        assert aligned.num_samples == waves[0].size == waves[-1].size


def test_errors_have_specific_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="not a file"):
        load_audio(tmp_path)
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty \(0 bytes\)"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "notes.wav").write_text("these are not samples\n" * 20)
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(tmp_path / "notes.wav")

    from PIL import Image  # Pillow comes with diffusers

    Image.new("RGB", (16, 16), "red").save(tmp_path / "face.png")
    with pytest.raises(AudioError, match="not an audio file: .* is an image"):
        load_audio(tmp_path / "face.png")

    with av.open(str(tmp_path / "mute.mp4"), "w") as container:  # video only
        video = container.add_stream("libx264", rate=25)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        for index in range(3):
            picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            picture.pts = index
            for packet in video.encode(picture):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    with pytest.raises(AudioError, match=r"no audio stream in .*mute.mp4: it holds only video \(h264\)"):
        load_audio(tmp_path / "mute.mp4")

    sf.write(tmp_path / "nosamples.wav", np.zeros(0, np.float32), RATE)
    with pytest.raises(AudioError, match="holds no samples"):
        load_audio(tmp_path / "nosamples.wav")

    quiet = np.random.default_rng(0).uniform(-0.5, 0.5, RATE) * SILENCE_PEAK  # below the threshold
    sf.write(tmp_path / "silent.wav", quiet, RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"is silent: peak .* < 0.0001 \(-80 dBFS\)"):
        load_audio(tmp_path / "silent.wav")
    assert load_audio(tmp_path / "silent.wav", allow_silent=True).size == RATE
    with pytest.raises(ValueError, match="sample_rate must be a positive integer"):
        load_audio(tmp_path / "silent.wav", sample_rate=0)


# --- alignment and mixing ---------------------------------------------------------------------


def test_pad_mode_never_cuts():
    a, b, c = chirp(RATE, 1.0), chirp(RATE, 2.5, 0.3), chirp(RATE, 0.4, 0.8)
    aligned = align_tracks([a, b, torch.from_numpy(c)], "pad")
    assert aligned.mode == "pad" and aligned.num_samples == b.size
    for source, out in zip((a, b, c), aligned.tracks):
        assert out.shape == (b.size,) and out.dtype == np.float32
        np.testing.assert_array_equal(out[: source.size], source)  # every sample kept, in place
        assert not out[source.size :].any()  # then zeros
    assert aligned.placements == ((0.0, 1.0), (0.0, 2.5), (0.0, 0.4))
    assert align_tracks([a, b], "para").num_samples == b.size  # MultiTalk's name


def test_concat_places_turns_sample_exactly():
    a, b, c = chirp(RATE, 1.0), chirp(RATE, 0.5, 0.3), chirp(RATE, 0.25, 0.8)
    aligned = align_tracks([a, b, c], "concat")
    starts = [0, a.size, a.size + b.size]
    assert aligned.num_samples == a.size + b.size + c.size
    for source, start, out in zip((a, b, c), starts, aligned.tracks):
        np.testing.assert_array_equal(out[start : start + source.size], source)
        assert not out[:start].any() and not out[start + source.size :].any()
    assert aligned.speaking_intervals() == [[(0.0, 1.0)], [(1.0, 1.5)], [(1.5, 1.75)]]
    assert align_tracks([a, b, c], "add").placements == aligned.placements  # MultiTalk's name

    # Explicit offsets (seconds) round to the nearest sample; turns may overlap.
    aligned = align_tracks([a, b], "add", offsets_s=[0.3, 0.123456])
    for source, start, out in zip((a, b), (4800, 1975), aligned.tracks):
        np.testing.assert_array_equal(out[start : start + source.size], source)
        assert not out[:start].any() and not out[start + source.size :].any()
    assert aligned.num_samples == 4800 + a.size
    from anytalker.encoders.wav2vec import video_frame_count

    assert aligned.video_frame_count(25) == video_frame_count(aligned.num_samples, RATE, 25) == 33  # 4n+1


def test_alignment_errors():
    a = chirp(RATE)
    with pytest.raises(ValueError, match="unknown alignment mode 'stack'"):
        align_tracks([a], "stack")
    with pytest.raises(ValueError, match="no tracks"):
        align_tracks([], "pad")
    with pytest.raises(ValueError, match="offsets_s places turns in concat mode"):
        align_tracks([a, a], "pad", offsets_s=[0, 1])
    with pytest.raises(ValueError, match="offsets_s has 1 entries for 2 tracks"):
        align_tracks([a, a], "concat", offsets_s=[0])
    with pytest.raises(ValueError, match="finite and >= 0"):
        align_tracks([a, a], "concat", offsets_s=[0, -1])
    # Per-track checks are wav2vec's, prefixed with the track's index.
    with pytest.raises(ValueError, match="track 1: waveform is silent"):
        align_tracks([a, np.zeros(100, np.float32)], "pad")
    with pytest.raises(ValueError, match="track 0: waveform must be 1-D mono"):
        align_tracks([np.stack([a, a])], "pad")


def test_mix_is_a_sum_without_clipping():
    a, b = chirp(RATE, 1.0, 0.9), chirp(RATE, 2.0, 0.4, f0=300, f1=300)
    np.testing.assert_array_equal(mix_tracks([a]), a)  # unity: one track that doesn't clip is itself
    quiet = mix_tracks([a * 0.5, b])
    assert quiet.size == b.size  # the longest, not the shortest
    np.testing.assert_allclose(quiet, np.pad(a * 0.5, (0, RATE)) + b, atol=1e-7)  # no 1/N drop

    # Loud overlapping speech: 0.9 + 0.9 would reach 1.8.
    left = np.concatenate([chirp(RATE, 1.0, 0.9), np.zeros(RATE, np.float32)])
    right = np.concatenate(
        [np.zeros(RATE // 2, np.float32), chirp(RATE, 1.0, 0.9, f0=500, f1=900), np.zeros(RATE // 2, np.float32)]
    )
    mixed = mix_tracks([left, right])
    assert np.abs(left + right).max() > 1.5 and np.abs(mixed).max() <= 1.0
    # Transparent away from the overlap (the gain fades over 2 x 20 ms around it).
    np.testing.assert_array_equal(mixed[: RATE // 2 - 700], (left + right)[: RATE // 2 - 700])
    np.testing.assert_array_equal(mixed[3 * RATE // 2 + 700 :], (left + right)[3 * RATE // 2 + 700 :])
    # A smooth gain, not a hard clip: no flat tops at the ceiling.
    assert np.mean(np.abs(mixed) > 0.999) < 0.01


@needs_examples
def test_real_mix_of_loudness_normalised_tracks_stays_in_range():
    pyloudnorm = pytest.importorskip("pyloudnorm")
    waves = [load_audio(EXAMPLES / "audios" / f"2p-0-{side}.wav") for side in ("left", "right")]
    normalised = [normalize_loudness(w, RATE, -23.0) for w in waves]
    meter = pyloudnorm.Meter(RATE)
    for wave in normalised:
        assert abs(meter.integrated_loudness(wave.astype(np.float64)) + 23.0) < 0.05
    mixed = align_tracks(normalised, "pad").mix()
    assert mixed.size == waves[0].size and np.abs(mixed).max() <= 1.0
    short = chirp(RATE, 0.2)  # shorter than one 0.4 s gating block: left alone
    np.testing.assert_array_equal(normalize_loudness(short), short)


# --- voice activity ---------------------------------------------------------------------------


def label_seconds(value: float) -> float:
    """speaker_duration.json holds SS.FF timecodes at 30 fps, not decimal seconds: "4.19" is
    4 s + 19 frames = 4.633 s. The fractions never exceed .29, the last interval ends at the
    clip's length read this way (interact_10: 8.18 -> 8.600 s, file 8.597 s), and the median
    boundary error of the VAD is 0.065 s this way against 0.51 s read as decimals."""
    return int(value) + round(value % 1 * 100) / 30


def frame_agreement(predicted, labelled, duration: float, fps: int = 25) -> float:
    """Share of video frames (centres) where 'speaking' agrees between two interval lists."""
    centres = (np.arange(int(duration * fps)) + 0.5) / fps

    def speaking(intervals):
        return np.any([(centres >= s) & (centres < e) for s, e in intervals] or [np.zeros_like(centres, bool)], axis=0)

    return float(np.mean(speaking(predicted) == speaking(labelled)))


@needs_benchmark
@pytest.mark.parametrize("method", ["silero", "energy"])
def test_speaking_intervals_match_benchmark_labels(method):
    """Turn-taking (interact_6, interact_19) and a listen-only track (interact_23 left, peak 3e-4).

    Over all 29 clips the agreement at 25 fps is 0.980 (silero) and 0.978 (energy); these six
    tracks give 0.909-1.0 per track. Thresholds: >= 0.88 per track, >= 0.95 on average.
    """
    labels = json.loads((BENCHMARK / "speaker_duration.json").read_text())
    scores = {}
    for clip in ("interact_6", "interact_19", "interact_23"):
        for side in ("left", "right"):
            wave = load_audio(BENCHMARK / f"audio_{side}" / f"{clip}_{side}.wav")
            predicted = speaking_intervals(wave, RATE, method=method)
            labelled = [(label_seconds(s), label_seconds(e)) for s, e in labels[f"{clip}.mp4"][side] if e > s]
            scores[f"{clip}/{side}"] = frame_agreement(predicted, labelled, wave.size / RATE)
    assert min(scores.values()) >= 0.88, scores
    assert np.mean(list(scores.values())) >= 0.95, scores
    assert scores["interact_23/left"] == 1.0  # the listener is never called a speaker


def test_speaking_intervals_on_synthetic_turns():
    rng = np.random.default_rng(0)
    # A speech-like burst: noise shaped by a 4 Hz syllable envelope; silero needs real speech,
    # so this checks the shared post-processing through the energy detector.
    t = np.arange(int(1.5 * RATE)) / RATE
    burst = (rng.normal(0, 0.2, t.size) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    wave = np.zeros(5 * RATE, np.float32)
    wave[RATE : RATE + burst.size] = burst  # 1.0 - 2.5 s
    wave[int(3.2 * RATE) : int(3.2 * RATE) + burst.size] = burst  # 3.2 - 4.7 s
    intervals = speaking_intervals(wave, RATE, method="energy", pad_s=0.0)
    assert len(intervals) == 2
    for (start, end), (s, e) in zip(intervals, [(1.0, 2.5), (3.2, 4.7)]):
        assert abs(start - s) < 0.04 and abs(end - e) < 0.04
    # A pause shorter than min_silence_s is bridged: one turn.
    assert len(speaking_intervals(wave, RATE, method="energy", min_silence_s=1.0)) == 1
    # Other rates are resampled first; torch tensors are accepted.
    resampled = speaking_intervals(torch.from_numpy(np.repeat(wave, 3)), 48000, method="energy", pad_s=0.0)
    assert np.allclose(resampled, intervals, atol=0.04)
    assert speaking_intervals(np.zeros(RATE, np.float32)) == []
    assert speaking_intervals(np.zeros(0, np.float32)) == []
    with pytest.raises(ValueError, match="unknown VAD method 'webrtc'"):
        speaking_intervals(wave, method="webrtc")


def test_auto_falls_back_to_energy_without_silero(monkeypatch):
    from anytalker.audio import activity

    wave = np.concatenate([np.zeros(RATE, np.float32), chirp(RATE, 1.0, 0.5), np.zeros(RATE, np.float32)])
    monkeypatch.setattr(activity, "_silero_available", lambda: False)
    intervals = speaking_intervals(wave)
    assert intervals == speaking_intervals(wave, method="energy")
    assert np.allclose(intervals, [(0.9, 2.1)], atol=0.04)  # 1-2 s, +-0.1 s pad, 32 ms chunks


def test_silero_leaves_torch_threads_alone():
    threads = torch.get_num_threads()
    speaking_intervals(chirp(RATE), method="silero")
    assert torch.get_num_threads() == threads  # `import silero_vad` alone would set it to 1
