"""`anytalker generate` end to end with `random-tiny`, and the pipeline's windows and guidance.

The CLI runs use the real example inputs (../shared/examples) at 32x48 with 1-2 steps: the video
content is noise, but frame counts, durations, the soundtrack, the sidecar, batch handling and
every input error are those of a real run. Tracks are cut short wherever full length is not the point.
"""

import json
import math
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT

import anytalker.pipeline.conditioning as conditioning_module
import anytalker.pipeline.pipeline_anytalker as pipeline_module
from anytalker import cli
from anytalker.pipeline import runner
from anytalker.audio import load_audio
from anytalker.faces import FaceBox
from anytalker.pipeline import AnyTalkerPipeline
from anytalker.pipeline.pipeline_anytalker import combine_guidance, match_colour
from anytalker.pipeline.schedule import Window, plan_windows
from anytalker.pipeline.tiny import random_tiny_components
from anytalker.video.io import probe_video, read_video

EXAMPLES = REPO_ROOT.parent / "shared" / "examples"
IMAGES, AUDIOS = EXAMPLES / "images", EXAMPLES / "audios"
needs_examples = pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"real example inputs not found at {EXAMPLES}")

OUT_RATE = 48000  # the mp4's AAC rate (pipeline.tasks.OUTPUT_AUDIO_RATE)
# The two faces of 2p-1.png as the default detector finds them (already square): passing them as
# --bbox skips detection (~1 s) in tests whose subject is not the faces.
BOXES_2P1 = ["312,206,634,528", "973,290,1242,559"]
# 2p-1 is turn-taking: left speaks in ~0.25-2.75 s, right in ~3.0-5.75 s (silent elsewhere).
LEFT_SPEECH, RIGHT_SPEECH = 0.25, 3.0


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def generate(capsys, *args, steps=1):
    """Runs `anytalker generate --model random-tiny` in-process; (exit code, stdout, stderr)."""
    argv = ["generate", "--model", "random-tiny", "--size", "32x48", "--steps", str(steps), "--quiet",
            *[str(a) for a in args]]
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def decoded_samples(path):
    """(number of samples, sample rate) of a file's first audio stream, decoded by PyAV alone."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream)), stream.codec_context.sample_rate


def input_duration(path):
    samples, rate = decoded_samples(path)
    return samples / rate


def write_wav(path, wave, rate=16000):
    """float mono -> 16-bit PCM wav, with PyAV."""
    pcm = np.round(np.clip(wave, -1, 1) * 32767).astype(np.int16)[None]
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def cut(path, start_s, length_s, dst):
    """A 16 kHz mono excerpt of an example track (exactly length_s long)."""
    wave = load_audio(path, 16000)
    start = round(start_s * 16000)
    return write_wav(dst, wave[start:start + round(length_s * 16000)])


def convert(src, dst, codec, rate=44100):
    """Re-encodes a mono track with PyAV as stereo at `rate`, as users' mp3 / m4a / flac come.

    Both channels carry the signal at full level (FFmpeg's own mono -> stereo upmix would lower it
    by 3 dB, which the level check of the soundtrack would then rightly report).
    """
    with av.open(str(src)) as source:
        to_rate = av.AudioResampler(format="fltp", layout="mono", rate=rate)
        frames = [f for frame in source.decode(audio=0) for f in to_rate.resample(frame)] + to_rate.resample(None)
    mono = np.concatenate([f.to_ndarray()[0] for f in frames])
    stereo = av.AudioFrame.from_ndarray(np.stack([mono, mono]), format="fltp", layout="stereo")
    # Timestamps let the mp4 muxer write the edit list that hides AAC's 1024 priming samples.
    stereo.sample_rate, stereo.pts, stereo.time_base = rate, 0, Fraction(1, rate)
    with av.open(str(dst), "w") as target:
        stream = target.add_stream({"mp3": "libmp3lame"}.get(codec, codec), rate=rate)
        stream.layout = "stereo"
        to_codec = av.AudioResampler(format=stream.codec_context.format.name, layout="stereo", rate=rate)
        for frame in to_codec.resample(stereo) + to_codec.resample(None):
            target.mux(stream.encode(frame))
        target.mux(stream.encode(None))
    return dst


def sidecar(mp4):
    return json.loads(mp4.with_suffix(".json").read_text())


def soundtrack(mp4):
    """The mp4's audio as mono float32 at its rate."""
    data = read_video(mp4)
    assert data.sample_rate == OUT_RATE
    return data.audio.mean(0)


def assert_mix_of(mp4, waves, length_tolerance=0):
    """The mp4's audio is the plain sum of `waves` (48 kHz), through AAC: same length (up to
    `length_tolerance` samples), same waveform, same level (an average of N tracks would be 1/N as loud)."""
    expected = np.zeros(max(w.size for w in waves), np.float32)
    for wave in waves:
        expected[:wave.size] += wave
    audio = soundtrack(mp4)
    assert abs(audio.size - expected.size) <= length_tolerance
    audio, expected = audio[:expected.size], expected[:audio.size]
    assert np.sqrt(np.mean(audio ** 2)) > 0.02  # audible: the examples' speech sits at ~0.05-0.1 RMS
    assert np.corrcoef(audio, expected)[0, 1] > 0.9
    assert np.sqrt(np.mean(audio ** 2)) / np.sqrt(np.mean(expected ** 2)) == pytest.approx(1.0, abs=0.1)
    return audio


def assert_video(mp4, duration, fps=24, size=(32, 48)):
    """H.264 + AAC; ceil(duration * fps) frames at fps; the audio lasts exactly `duration`."""
    info = probe_video(mp4)
    video, audio = info["video"], info["audio"]
    assert (video["codec"], audio["codec"]) == ("h264", "aac")
    assert (video["height"], video["width"]) == size
    assert video["fps"] == fps
    assert video["frames"] == math.ceil(duration * fps - 1e-9)
    assert abs(audio["duration"] - duration) <= 1 / OUT_RATE
    assert abs(video["duration"] - audio["duration"]) <= 1 / fps
    return info


@pytest.fixture
def model_loads(monkeypatch):
    """Counts load_pipeline calls (the real loader still runs)."""
    calls = []
    real = runner.load_pipeline

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "load_pipeline", spy)
    return calls


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a model is loaded: input errors must be reported before that."""
    def fail(*args, **kwargs):
        pytest.fail("load_pipeline was called: the input error must be reported before any model is loaded")

    monkeypatch.setattr(runner, "load_pipeline", fail)


# ------------------------------------------------------------------------------------------------
# 1. end to end on the real examples
# ------------------------------------------------------------------------------------------------

@needs_examples
@pytest.mark.parametrize("name, tracks, fps", [
    ("1p-0", ["1p-0.wav"], 24),
    ("2p-1", ["2p-1-left.wav", "2p-1-right.wav"], 24),
    ("1p-0", ["1p-0.wav"], 25),
], ids=["1p-0", "2p-1", "1p-0-25fps"])
def test_generate_real_examples(tmp_path, capsys, model_loads, name, tracks, fps):
    audio = [AUDIOS / t for t in tracks]
    out = tmp_path / "out" / f"{name}.mp4"
    code, _, err = generate(capsys, "--image", IMAGES / f"{name}.png", *[a for p in audio for a in ("--audio", p)],
                            "--prompt", "two people talk", "--fps", fps, "--out", out, "--seed", 7, steps=2)
    assert code == 0, err
    assert len(model_loads) == 1

    duration = max(input_duration(p) for p in audio)
    info = assert_video(out, duration, fps)
    # Every input track is heard, at full level (checked against the tracks' own samples at 48 kHz).
    assert_mix_of(out, [load_audio(p, OUT_RATE) for p in audio])

    meta = sidecar(out)
    assert meta["seed"] == 7
    assert meta["frames"] == info["video"]["frames"]
    assert (meta["fps"], meta["height"], meta["width"], meta["num_inference_steps"]) == (fps, 32, 48, 2)
    assert meta["guidance_scale"] == 4.5 and meta["audio_guidance_scale"] is None
    assert meta["identities"] == len(tracks) and meta["model"] == "random-tiny"
    assert meta["seconds"] > 0
    # The sidecar reports the 16 kHz feature timeline: resampling rounds its length up (librosa's rule).
    assert meta["audio"]["duration_s"] == pytest.approx(duration, abs=1 / 16000)
    assert meta["task"]["prompt"] == "two people talk"
    faces = meta["faces"]
    assert faces["source"] in ("dlib", "opencv", "dlib-cnn")
    assert len(faces["boxes"]) == len(tracks)
    for x0, y0, x1, y1 in faces["boxes"]:
        assert x1 - x0 == y1 - y0 > 50  # square, and a face, not a speck
    # Tracks bind to faces left to right.
    assert [box[0] for box in faces["boxes"]] == sorted(box[0] for box in faces["boxes"])


# ------------------------------------------------------------------------------------------------
# 2. input formats
# ------------------------------------------------------------------------------------------------

@needs_examples
@pytest.mark.parametrize("codec, suffix", [("mp3", ".mp3"), ("aac", ".m4a"), ("flac", ".flac")])
def test_compressed_44k_stereo_tracks(tmp_path, capsys, codec, suffix):
    # 1.3 s of speech: 31.2 frames at 24 fps, so the count (32) has 8 ms / 33 ms of margin either
    # way for the codecs' sub-millisecond length differences.
    wav = cut(AUDIOS / "2p-1-left.wav", LEFT_SPEECH, 1.3, tmp_path / "speech.wav")
    track = convert(wav, tmp_path / f"speech{suffix}", codec)
    with av.open(str(track)) as container:  # the test really feeds 44.1 kHz stereo
        assert (container.streams.audio[0].rate, container.streams.audio[0].codec_context.channels) == (44100, 2)
    out = tmp_path / "out.mp4"
    code, _, err = generate(capsys, "--image", IMAGES / "2p-1.png", "--audio", track, "--bbox", BOXES_2P1[0],
                            "--out", out)
    assert code == 0, err

    assert probe_video(out)["video"]["frames"] == math.ceil(1.3 * 24) == 32  # what the wav gives
    # Codec priming / padding is removed: at most a resampler's rounding (< 2 ms) from the wav.
    assert sidecar(out)["audio"]["duration_s"] == pytest.approx(1.3, abs=0.002)
    assert_mix_of(out, [load_audio(wav, OUT_RATE)], length_tolerance=round(0.002 * OUT_RATE))


# ------------------------------------------------------------------------------------------------
# 3. audio modes
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def turns(tmp_path):
    """Two short speech excerpts of 2p-1: left 0.5 s, right 0.75 s."""
    if not EXAMPLES.is_dir():
        pytest.skip(f"real example inputs not found at {EXAMPLES}")
    left = cut(AUDIOS / "2p-1-left.wav", LEFT_SPEECH, 0.5, tmp_path / "left.wav")
    right = cut(AUDIOS / "2p-1-right.wav", RIGHT_SPEECH, 0.75, tmp_path / "right.wav")
    return left, right


def _two_person(capsys, out, tracks, *extra):
    return generate(capsys, "--image", IMAGES / "2p-1.png", "--audio", tracks[0], "--audio", tracks[1],
                    "--bbox", BOXES_2P1[0], "--bbox", BOXES_2P1[1], "--out", out, *extra)


def test_concat_mode_plays_turns_back_to_back(tmp_path, capsys, turns):
    out = tmp_path / "concat.mp4"
    code, _, err = _two_person(capsys, out, turns, "--audio-mode", "concat")
    assert code == 0, err
    assert_video(out, 1.25)  # 0.5 + 0.75 s -> 30 frames
    meta = sidecar(out)
    assert meta["audio"]["mode"] == "concat"
    assert meta["audio"]["placements_s"] == [[0.0, 0.5], [0.5, 1.25]]
    left, right = (load_audio(t, OUT_RATE) for t in turns)
    assert_mix_of(out, [left, np.concatenate([np.zeros(left.size, np.float32), right])])


def test_offsets_place_turns(tmp_path, capsys, turns):
    out = tmp_path / "offsets.mp4"
    code, _, err = _two_person(capsys, out, turns, "--audio-mode", "concat", "--offsets", "0,1.0")
    assert code == 0, err
    assert_video(out, 1.75)  # the right turn ends at 1.0 + 0.75 s -> 42 frames
    assert sidecar(out)["audio"]["placements_s"] == [[0.0, 0.5], [1.0, 1.75]]
    audio = soundtrack(out)
    gap = audio[round(0.55 * OUT_RATE):round(0.95 * OUT_RATE)]  # between the turns (AAC smears ~20 ms)
    speech = audio[round(1.0 * OUT_RATE):]
    assert np.sqrt(np.mean(gap ** 2)) < 0.002  # silence, 20 dB below...
    assert np.sqrt(np.mean(speech ** 2)) > 0.02  # ...the right turn's speech


def test_pad_mode_never_cuts(tmp_path, capsys, turns):
    longer = cut(AUDIOS / "2p-1-right.wav", RIGHT_SPEECH, 1.25, tmp_path / "right-long.wav")
    out = tmp_path / "pad.mp4"
    code, _, err = _two_person(capsys, out, (turns[0], longer))  # 0.5 s and 1.25 s
    assert code == 0, err
    assert_video(out, 1.25)  # the longest track, 30 frames
    assert sidecar(out)["audio"]["placements_s"] == [[0.0, 0.5], [0.0, 1.25]]
    assert_mix_of(out, [load_audio(turns[0], OUT_RATE), load_audio(longer, OUT_RATE)])


@pytest.mark.parametrize("scheduler, name, shift", [("unipc", "UniPCMultistepScheduler", 3.0),
                                                   ("euler", "FlowMatchEulerDiscreteScheduler", 5.0)])
def test_scheduler_choice(tmp_path, capsys, turns, scheduler, name, shift):
    out = tmp_path / f"{scheduler}.mp4"
    extra = ["--scheduler", scheduler] + (["--flow-shift", "5"] if scheduler == "euler" else [])
    code, _, err = _two_person(capsys, out, turns, *extra, "--steps", "2")
    assert code == 0, err
    meta = sidecar(out)
    assert (meta["scheduler"], meta["flow_shift"]) == (name, shift)
    assert_video(out, 0.75)


# ------------------------------------------------------------------------------------------------
# 4. user boxes
# ------------------------------------------------------------------------------------------------

@needs_examples
def test_bbox_override(tmp_path, capsys, turns):
    out = tmp_path / "boxes.mp4"
    # 340x320 -> 340 square on the same centre (470, 360); 100x60 at the top edge -> 100 square,
    # centre (50, 40) would start at y = -10: shifted into the image, not shrunk.
    code, _, err = generate(capsys, "--image", IMAGES / "2p-1.png", "--audio", turns[0], "--audio", turns[1],
                            "--bbox", "300,200,640,520", "--bbox", "0,10,100,70", "--out", out)
    assert code == 0, err
    faces = sidecar(out)["faces"]
    assert faces == {"source": "user", "boxes": [[300, 190, 640, 530], [0, 0, 100, 100]]}


@needs_examples
@pytest.mark.parametrize("box, message", [
    ("10,10,5,50", "x1 (5) must be greater than x0 (10)"),
    ("0,0,2000,100", "outside the 1536x1024"),
    ("1,2,3", "expected 4 comma-separated numbers"),
    ("a,0,10,10", "x0 = 'a' is not a number"),
])
def test_bad_bbox_is_rejected(tmp_path, capsys, no_model, turns, box, message):
    out = tmp_path / "out" / "x.mp4"
    code, _, err = generate(capsys, "--image", IMAGES / "2p-1.png", "--audio", turns[0], "--audio", turns[1],
                            "--bbox", BOXES_2P1[0], "--bbox", box, "--out", out)
    assert code == 2
    assert message in err
    assert not out.parent.exists()


# ------------------------------------------------------------------------------------------------
# 5. batch files
# ------------------------------------------------------------------------------------------------

@needs_examples
def test_release_batch(tmp_path, capsys, model_loads):
    (tmp_path / "a").mkdir()
    cut(AUDIOS / "1p-0.wav", 0.0, 0.6, tmp_path / "a" / "one.wav")
    cut(AUDIOS / "2p-1-left.wav", LEFT_SPEECH, 0.6, tmp_path / "a" / "left.wav")
    cut(AUDIOS / "2p-1-right.wav", RIGHT_SPEECH, 0.9, tmp_path / "a" / "right.wav")
    batch = {  # audio paths relative to the batch file, as in official_batch.json
        "one": {"image_path": str(IMAGES / "1p-0.png"), "caption": "a man talking",
                "enhance_caption": "a man talking calmly", "audio_list": ["a/one.wav"]},
        "two": {"image_path": str(IMAGES / "2p-1.png"), "caption": "two people talk",
                "enhance_caption": "", "audio_list": ["a/left.wav", "a/right.wav"]},
    }
    (tmp_path / "batch.json").write_text(json.dumps(batch))
    out_dir = tmp_path / "videos"
    code, _, err = generate(capsys, "--batch", tmp_path / "batch.json", "--out-dir", out_dir)
    assert code == 0, err
    assert len(model_loads) == 1  # one model for the whole batch
    assert sorted(p.name for p in out_dir.iterdir()) == ["one.json", "one.mp4", "two.json", "two.mp4"]
    assert_video(out_dir / "one.mp4", 0.6)
    assert_video(out_dir / "two.mp4", 0.9)  # pad mode: the longer track
    assert sidecar(out_dir / "one.mp4")["task"]["prompt"] == "a man talking"
    assert len(sidecar(out_dir / "two.mp4")["faces"]["boxes"]) == 2


# ------------------------------------------------------------------------------------------------
# 6. input errors: exit 2, a specific message, no output, no model loaded
# ------------------------------------------------------------------------------------------------

def _grey_png(tmp_path, size=64):
    from PIL import Image

    path = tmp_path / f"grey{size}.png"
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(path)
    return path


def _silent_wav(tmp_path):
    return write_wav(tmp_path / "silent.wav", np.zeros(16000, np.float32))


def _text_as(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is not media\n" * 20)
    return path


# Each case: (build argv from tmp_path and the 2p-1 turns, expected message).
ERROR_CASES = {
    "more-tracks-than-faces": (
        lambda tmp, t: ["--image", IMAGES / "2p-1.png", "--audio", t[0], "--audio", t[1], "--audio", t[0]],
        "3 audio tracks but 2 faces detected"),
    "no-face": (lambda tmp, t: ["--image", _grey_png(tmp), "--audio", t[0]], "1 audio track but 0 faces detected"),
    "silent-track": (lambda tmp, t: ["--image", IMAGES / "1p-0.png", "--audio", _silent_wav(tmp)], "is silent"),
    "unreadable-audio": (lambda tmp, t: ["--image", IMAGES / "1p-0.png", "--audio", _text_as(tmp, "speech.wav")],
                         "not a readable audio file"),
    "missing-audio": (lambda tmp, t: ["--image", IMAGES / "1p-0.png", "--audio", tmp / "nope.wav"],
                      "audio file not found"),
    "missing-image": (lambda tmp, t: ["--image", tmp / "nope.png", "--audio", t[0]], "image not found"),
    "unreadable-image": (lambda tmp, t: ["--image", _text_as(tmp, "face.png"), "--audio", t[0]],
                         "not a readable image"),
    "image-too-small": (lambda tmp, t: ["--image", _grey_png(tmp, 16), "--audio", t[0]],
                        "is 16x16; at least 32 px per side"),
    "bbox-count": (lambda tmp, t: ["--image", IMAGES / "2p-1.png", "--audio", t[0], "--audio", t[1],
                                   "--bbox", BOXES_2P1[0]], "1 boxes for 2 audio tracks"),
    # Settings the pipeline would only reject after loading the model.
    "size-not-multiple-of-16": (lambda tmp, t: ["--image", IMAGES / "1p-0.png", "--audio", t[0], "--size", "33x48"],
                                "multiples of 16"),
    "cpu-offload-without-gpu": (lambda tmp, t: ["--image", IMAGES / "1p-0.png", "--audio", t[0], "--cpu-offload"],
                                "--cpu-offload needs a GPU"),
    "size-garbled": (lambda tmp, t: ["--image", IMAGES / "1p-0.png", "--audio", t[0], "--size", "big"],
                     "expected HxW"),
    "window-not-4n+1": (lambda tmp, t: ["--image", IMAGES / "1p-0.png", "--audio", t[0],
                                        "--max-frames-per-window", "80"], "--max-frames-per-window must be 4n+1"),
    "zero-steps": (lambda tmp, t: ["--image", IMAGES / "1p-0.png", "--audio", t[0], "--steps", "0"],
                   "--steps and --fps must be >= 1"),
    "offsets-garbled": (lambda tmp, t: ["--image", IMAGES / "2p-1.png", "--audio", t[0], "--audio", t[1],
                                        "--audio-mode", "concat", "--offsets", "0,x"], "--offsets '0,x'"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_input_errors(tmp_path, capsys, no_model, turns, case):
    if case == "cpu-offload-without-gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is present: offloading is allowed")
    build, message = ERROR_CASES[case]
    out = tmp_path / "out" / "video.mp4"
    argv = [*build(tmp_path, turns), "--out", out]
    code, _, err = generate(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err
    assert not out.parent.exists()  # no video, no sidecar, no temporary file


@pytest.mark.parametrize("content, message", [(None, "batch file not found"), ("{oops", "is not valid JSON"),
                                              ("[]", "holds no tasks")])
def test_bad_batch_file(tmp_path, capsys, no_model, content, message):
    batch = tmp_path / "batch.json"
    if content is not None:
        batch.write_text(content)
    code = cli.main(["generate", "--model", "random-tiny", "--batch", str(batch), "--out-dir", str(tmp_path / "o")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------
# 7. long-video windows, through the pipeline API
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_pipe():
    pipe = AnyTalkerPipeline(**random_tiny_components(0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _inputs(seconds, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(round(seconds * 16000))).astype(np.float32)
    return image, [audio], [FaceBox(32, 8, 80, 56)]


def test_windows_carry_motion_frames(tiny_pipe, monkeypatch):
    conditions, decoded = [], []
    real_encode, real_decode = conditioning_module.encode_video, pipeline_module.decode_latents

    def spy_encode(vae, video, *args, **kwargs):
        conditions.append(video.detach().clone())
        return real_encode(vae, video, *args, **kwargs)

    def spy_decode(vae, latents, *args, **kwargs):
        frames = real_decode(vae, latents, *args, **kwargs)
        decoded.append(frames.detach().float().clone())
        return frames

    monkeypatch.setattr(conditioning_module, "encode_video", spy_encode)
    monkeypatch.setattr(pipeline_module, "decode_latents", spy_decode)
    image, audio, boxes = _inputs(1.25)  # 30 frames at 24 fps -> 33 generated (4n+1)
    result = tiny_pipe(image, audio, boxes, prompt="a man talking", height=32, width=48, fps=24,
                       num_inference_steps=1, max_frames_per_window=17, motion_frames=5,
                       generator=torch.Generator().manual_seed(0), output_type="pt")

    plan = plan_windows(33, 17, 5)
    assert plan == [Window(0, 17, 0), Window(12, 17, 5), Window(24, 9, 5)]
    assert result.info["windows"] == [vars(w) for w in plan]
    assert result.info["frames"] == math.ceil(1.25 * 24) == 30
    assert result.frames.shape == (30, 3, 32, 48)
    assert [c.shape[2] for c in conditions] == [17, 17, 9] and len(decoded) == 3

    pixels = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    reference = F.interpolate(pixels, size=(32, 48), mode="bicubic", align_corners=False).clamp(-1, 1)[0]
    # Window 0: the reference image, then nothing known.
    torch.testing.assert_close(conditions[0][0, :, 0], reference)
    assert conditions[0][0, :, 1:].abs().max() == 0
    # Window 1 starts from window 0's last 5 frames as decoded (window 0 is not re-anchored).
    carried = [decoded[0][0][:, -5:]]
    # Window 2 starts from window 1's last 5 frames after colour re-anchoring on the reference.
    matched_1 = match_colour(decoded[1][0], reference)
    carried.append(matched_1[:, -5:])
    assert (matched_1 - decoded[1][0]).abs().max() > 0.05  # the re-anchoring is not a no-op here
    for index in (1, 2):
        torch.testing.assert_close(conditions[index][0, :, :5], carried[index - 1])
        assert conditions[index][0, :, 5:].abs().max() == 0
    # The re-anchored window has the reference's colour statistics (up to the [-1, 1] clamp).
    torch.testing.assert_close(matched_1.mean((1, 2, 3)), reference.mean((1, 2)), atol=0.05, rtol=0)

    # The video is window 0, then each later window without its carried frames, cut to 30.
    stitched = torch.cat([decoded[0][0], matched_1[:, 5:], match_colour(decoded[2][0], reference)[:, 5:]], dim=1)
    torch.testing.assert_close(result.frames, stitched[:, :30].permute(1, 0, 2, 3))


# ------------------------------------------------------------------------------------------------
# 8. guidance
# ------------------------------------------------------------------------------------------------

def test_combine_guidance_numbers():
    shape = (1, 2, 3)
    cond, text, uncond = torch.full(shape, 5.0), torch.full(shape, 3.0), torch.full(shape, 1.0)
    # 2 passes [cond, uncond]: uncond + s (cond - uncond) = 1 + 4.5 * 4
    two = combine_guidance(torch.cat([cond, uncond]), 4.5, None)
    assert two.shape == shape and torch.all(two == 19.0)
    # 3 passes [cond, text, uncond]: uncond + s_t (text - uncond) + s_a (cond - text) = 1 + 4.5 * 2 + 2 * 2
    three = combine_guidance(torch.cat([cond, text, uncond]), 4.5, 2.0)
    assert three.shape == shape and torch.all(three == 14.0)
    # Equal scales collapse to the 2-pass formula.
    torch.testing.assert_close(combine_guidance(torch.cat([cond, text, uncond]), 3.0, 3.0),
                               combine_guidance(torch.cat([cond, uncond]), 3.0, None))
    # Scale 1: no uncond pass. One pass is the conditional prediction itself; [cond, text] with an
    # audio scale gives text + s_a (cond - text) = 3 + 2 * 2, the 3-pass formula's value at s = 1.
    assert torch.equal(combine_guidance(cond, 1.0, None), cond)
    audio_only = combine_guidance(torch.cat([cond, text]), 1.0, 2.0)
    assert audio_only.shape == shape and torch.all(audio_only == 7.0)
    assert torch.all(combine_guidance(torch.cat([cond, text, uncond]), 1.0 + 1e-9, 2.0) == 7.0)


def test_guidance_one_skips_the_uncond_pass_without_changing_the_video(tiny_pipe):
    """Scale 1 in one pass gives the video of the 2-pass formula at a scale a hair above 1."""
    image, audio, boxes = _inputs(0.5)
    videos = [tiny_pipe(image, audio, boxes, prompt="a man talking", height=32, width=48, num_inference_steps=2,
                        guidance_scale=scale, max_frames_per_window=17, generator=torch.Generator().manual_seed(0),
                        output_type="pt").frames for scale in (1.0, 1.0 + 1e-6)]
    assert videos[0].shape == videos[1].shape
    assert (videos[0] - videos[1]).abs().max().item() < 1e-4


@pytest.mark.parametrize("guidance_scale, audio_guidance_scale, passes",
                         [(4.5, None, 2), (4.5, 2.0, 3), (1.0, None, 1), (1.0, 2.0, 2)])
def test_guidance_passes_share_one_forward(tiny_pipe, monkeypatch, guidance_scale, audio_guidance_scale, passes):
    forwards, steps = [], []
    real_forward, real_step = tiny_pipe.transformer.forward, tiny_pipe.scheduler.step

    def spy_forward(**kwargs):
        output = real_forward(**kwargs)
        forwards.append({**kwargs, "sample": output.sample.detach().clone()})
        return output

    def spy_step(model_output, *args, **kwargs):
        steps.append(model_output.detach().clone())
        return real_step(model_output, *args, **kwargs)

    monkeypatch.setattr(tiny_pipe.transformer, "forward", spy_forward)
    monkeypatch.setattr(tiny_pipe.scheduler, "step", spy_step)
    image, audio, boxes = _inputs(0.9)  # 22 frames -> 25 generated: windows of 17 and 13 frames
    result = tiny_pipe(image, audio, boxes, prompt="a man talking", negative_prompt="static", height=32, width=48,
                       num_inference_steps=2, guidance_scale=guidance_scale,
                       audio_guidance_scale=audio_guidance_scale,
                       max_frames_per_window=17, motion_frames=5, generator=torch.Generator().manual_seed(0))
    assert len(result.info["windows"]) == 2
    assert len(forwards) == len(steps) == 2 * 2  # one forward per step per window, all passes inside it

    for call, noise_pred in zip(forwards, steps):
        assert call["hidden_states"].shape[0] == passes
        assert all(call[k].shape[0] == passes for k in ("timestep", "encoder_hidden_states", "audio_embeds",
                                                         "face_embeds", "encoder_hidden_states_image"))
        latents, text, audio_in = call["hidden_states"], call["encoder_hidden_states"], call["audio_embeds"]
        assert torch.equal(latents[0], latents[-1])  # every pass denoises the same latents
        # Pass 0 is fully conditioned; the uncond pass (last, guidance_scale != 1) has the negative
        # prompt and no audio; the text-only pass (with an audio scale) keeps the prompt, drops the audio.
        assert audio_in[0].abs().max() > 0 and torch.all(audio_in[1:] == 0)
        assert torch.equal(text[0], text[-1]) == (guidance_scale == 1)
        if audio_guidance_scale is not None:
            assert torch.equal(text[0], text[1])
        # The scheduler gets the guided combination of exactly this forward's passes.
        torch.testing.assert_close(noise_pred, combine_guidance(call["sample"].float(), guidance_scale,
                                                                audio_guidance_scale))
