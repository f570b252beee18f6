"""wav2vec2 audio features against the official release's golden vectors (shared/parity/README.md §5)."""

import shutil

import pytest
import torch
from conftest import load_case, parity_file, parity_json, parity_params, require_parity_dir
from safetensors.torch import load_file, save_file
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from anytalker.encoders.wav2vec import (
    AudioFeatureEncoder,
    audio_frame_count,
    load_wav2vec2,
    normalize_waveform,
    video_frame_count,
    window_features,
)
from anytalker.parity import (
    TOLERANCE,
    load_release_wav2vec,
    wav2vec_case_diffs,
    wav2vec_case_outputs,
)
from anytalker.utils.checkpoints import CheckpointError

TOL = TOLERANCE  # README §2; float32 noise is ~3e-6, a semantic error is > 1e-3


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """The golden tiny model laid out as a transformers folder, for the loader tests."""
    config, weights = parity_file("wav2vec_tiny.config.json"), parity_file("wav2vec_tiny.weights.safetensors")
    folder = tmp_path_factory.mktemp("wav2vec_tiny")
    shutil.copy(config, folder / "config.json")
    shutil.copy(weights, folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def encoder():
    """The tiny model as `anytalker parity` loads it (through load_wav2vec2)."""
    parity_file("wav2vec_tiny.config.json"), parity_file("wav2vec_tiny.weights.safetensors")
    return load_release_wav2vec(require_parity_dir())


@pytest.fixture(scope="module")
def tiny_config():
    return parity_json("wav2vec_tiny.config.json")


def _feature_shape(frames, encoder, config):
    """[frames, window, layers, hidden] of what the DiT receives."""
    return frames, 2 * encoder.window_radius + 1, config["num_hidden_layers"], config["hidden_size"]


def _max_diff(a, b):
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a.float() - b.float()).abs().max().item()


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("case_path", parity_params("wav2vec_tiny"))
def test_parity(case_path, encoder):
    diffs = wav2vec_case_diffs(encoder, case_path)  # what `anytalker parity` reports
    assert list(diffs) == ["F", "audio_length", "input_values", "input_values_padded", "cnn_features",
                           "cnn_features_interp", "hidden_states_all", "windowed_all", "expected"]
    assert diffs["F"] == diffs["audio_length"] == 0
    assert diffs["input_values"] < 1e-5 and diffs["input_values_padded"] < 1e-5
    for key, diff in diffs.items():
        assert diff < TOL, f"{case_path.name}:{key} differs from the release by {diff:.2e}"

    case, meta = load_case(case_path)
    assert int(case["F"]) == meta["F"] and int(case["audio_length"]) == meta["audio_length"]
    fps, samples, rate = int(case["fps"]), meta["num_samples"], meta["sample_rate"]
    assert case["waveform"].numel() == samples
    assert video_frame_count(samples, rate, fps) == meta["F"]
    assert audio_frame_count(samples, rate, fps) == meta["audio_length_before_pad"]
    outputs = wav2vec_case_outputs(encoder, case)
    assert outputs["input_values_padded"].numel() == meta["num_samples"] + meta["pad_samples"]
    assert outputs["cnn_features"].shape[0] == meta["cnn_frames"]
    assert outputs["expected"].dtype == torch.float32
    # __call__ is the same computation
    assert torch.equal(encoder(case["waveform"]), outputs["expected"])


@pytest.mark.parametrize("case_path", parity_params("wav2vec_tiny", select=lambda meta: meta["pad_samples"] > 0,
                                                   what="needing padding"))
def test_padding_quirk_matters(case_path, encoder, tiny_config):
    """A case whose audio_length is not a multiple of F (e.g. 3 s -> 72 frames, F = 69) is padded to
    the next multiple (138); without the quirk the numbers change."""
    case, meta = load_case(case_path)
    plain = AudioFeatureEncoder(encoder.model, official_padding=False).trace(case["waveform"], fps=int(case["fps"]))
    assert (plain.num_frames, plain.audio_length) == (meta["F"], meta["audio_length_before_pad"])
    assert plain.input_values_padded.numel() == meta["num_samples"]
    assert plain.features.shape == _feature_shape(meta["F"], encoder, tiny_config)
    assert _max_diff(plain.features, case["expected"]) > 1e-3


@pytest.mark.parametrize("case_path", parity_params("wav2vec_tiny"))
def test_num_frames_override_pads_to_it(case_path, encoder, tiny_config):
    """With several tracks F comes from the longest one: a shorter track is padded up to F frames."""
    case, meta = load_case(case_path)
    fps, frames = int(case["fps"]), meta["F"] + 4  # the next 4n+1 frame count, past this track's audio_length
    audio_length = meta["audio_length_before_pad"]
    assert frames > audio_length
    trace = encoder.trace(case["waveform"], fps=fps, num_frames=frames)
    assert (trace.num_frames, trace.audio_length) == (frames, frames)
    assert trace.input_values_padded.numel() == meta["num_samples"] + (frames - audio_length) * (meta["sample_rate"] // fps)
    assert trace.features.shape == _feature_shape(frames, encoder, tiny_config)
    with pytest.raises(ValueError, match="exceeds"):
        AudioFeatureEncoder(encoder.model, official_padding=False).trace(case["waveform"], fps=fps, num_frames=frames)


def test_inference_mode_and_no_grad(encoder, tiny_config):
    wave = torch.randn(8000, generator=torch.Generator().manual_seed(0))
    ref = encoder(wave)
    with torch.inference_mode():
        assert torch.equal(encoder(wave), ref)
    with torch.no_grad():
        assert torch.equal(encoder(wave), ref)
    encoder.model.train()  # dropout/LayerDrop would make this nondeterministic; trace forces eval
    assert torch.equal(encoder(wave), ref) and not encoder.model.training
    assert video_frame_count(8000) == 9  # 0.5 s at 24 fps: 12 frames -> 4*2+1
    assert not ref.requires_grad and ref.shape == _feature_shape(9, encoder, tiny_config)


# ---------------------------------------------------------------- loader


def _tiny_ctc():
    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=12,
    )
    torch.manual_seed(0)
    return Wav2Vec2ForCTC(config).eval()


def _assert_same_base(model, ctc):
    ref, got = ctc.wav2vec2.state_dict(), model.state_dict()
    assert set(ref) == set(got)
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    # the effective (weight-normed) positional conv weight, not just its factors
    assert torch.equal(model.encoder.pos_conv_embed.conv.weight, ctc.wav2vec2.encoder.pos_conv_embed.conv.weight)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_load_for_ctc_checkpoint(tmp_path):
    ctc = _tiny_ctc()
    ctc.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "model.safetensors").keys()
    assert "lm_head.weight" in keys and all(k.startswith(("wav2vec2.", "lm_head.")) for k in keys)
    model = load_wav2vec2(tmp_path)
    _assert_same_base(model, ctc)
    wave = torch.randn(4000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(AudioFeatureEncoder(model)(wave), AudioFeatureEncoder(ctc.wav2vec2)(wave))


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_load_old_weight_norm_names(tmp_path, filename):
    """Older facebook/wav2vec2-base-960h files name the weight-norm factors weight_g / weight_v."""
    ctc = _tiny_ctc()
    ctc.save_pretrained(tmp_path / "new")
    renames = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    old = {}
    for key, value in load_file(tmp_path / "new" / "model.safetensors").items():
        for new_name, old_name in renames.items():
            key = key.replace(new_name, old_name)
        old[key] = value
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in old
    folder = tmp_path / "old"
    folder.mkdir()
    shutil.copy(tmp_path / "new" / "config.json", folder / "config.json")
    if filename.endswith(".bin"):
        torch.save(old, folder / filename)
    else:
        save_file(old, folder / filename, metadata={"format": "pt"})
    _assert_same_base(load_wav2vec2(folder), ctc)


def test_weight_norm_convention(tiny_folder):
    """README §5: weight = g * v / ||v||, the norm over dims 0 and 1 (one value per tap)."""
    raw = load_file(tiny_folder / "model.safetensors")
    g = raw["encoder.pos_conv_embed.conv.parametrizations.weight.original0"]
    v = raw["encoder.pos_conv_embed.conv.parametrizations.weight.original1"]
    expected = g * v / v.norm(dim=(0, 1), keepdim=True)
    model = load_wav2vec2(tiny_folder)
    assert _max_diff(model.encoder.pos_conv_embed.conv.weight, expected) < 1e-6


def test_load_dtype(tiny_folder, tiny_config):
    model = load_wav2vec2(tiny_folder, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    encoder = AudioFeatureEncoder(model)
    features = encoder(torch.randn(4000, generator=torch.Generator().manual_seed(2)))
    assert features.dtype == torch.float32 and features.shape == _feature_shape(5, encoder, tiny_config)


def test_load_errors(tmp_path, tiny_folder):
    missing = tmp_path / "nowhere" / "wav2vec2-base-960h"
    with pytest.raises(CheckpointError, match="folder not found") as info:
        load_wav2vec2(missing)
    assert str(missing) in str(info.value) and "config.json" in str(info.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json") as info:
        load_wav2vec2(empty)
    assert str(empty / "config.json") in str(info.value)

    shutil.copy(tiny_folder / "config.json", empty / "config.json")
    with pytest.raises(CheckpointError, match="weights not found") as info:
        load_wav2vec2(empty)
    assert str(empty) in str(info.value) and "model.safetensors" in str(info.value)

    # a file lacking a transformer weight must not load with a silently random tensor
    state = load_file(tiny_folder / "model.safetensors")
    del state["encoder.layers.1.attention.q_proj.weight"], state["masked_spec_embed"]
    save_file(state, empty / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.1\.attention\.q_proj\.weight") as info:
        load_wav2vec2(empty)
    assert "masked_spec_embed" not in str(info.value)  # training-only, allowed to be absent


# ---------------------------------------------------------------- frame counts and windows


# Pure arithmetic (no golden file is read); the first two rows are README §5's worked examples.
@pytest.mark.parametrize(
    "samples, fps, audio_length, frames",
    [
        (32666, 24, 49, 49),  # 2.041625 s * 24 = 48.999 -> 49 = 4*12+1
        (48000, 24, 72, 69),  # 3 s -> 72 -> 4*17+1
        (16000, 25, 25, 25),  # 1 s at 25 fps
        (80001, 24, 121, 121),  # 5 s + 1 sample: 120.0015 -> 121
        (2667, 24, 5, 5),  # 4.0005 -> 5
        (2666, 24, 4, 1),  # 3.999 -> 4 -> 1
        (1, 24, 1, 1),
    ],
)
def test_frame_counts(samples, fps, audio_length, frames):
    assert audio_frame_count(samples, 16000, fps) == audio_length
    assert video_frame_count(samples, 16000, fps) == frames


def test_frame_count_errors():
    with pytest.raises(ValueError, match="too short"):
        video_frame_count(0)
    with pytest.raises(ValueError, match="fps"):
        video_frame_count(16000, fps=0)
    with pytest.raises(ValueError, match="sample_rate"):
        video_frame_count(16000, sample_rate=-1)


def test_window_features_clamps_both_ends():
    hidden = torch.arange(4.0)[:, None, None] * torch.tensor([1.0, 10.0])[None, :, None]  # [4, 2, 1]
    win = window_features(hidden)
    assert win.shape == (4, 5, 2, 1)
    assert win[:, :, 0, 0].tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]]
    assert torch.equal(win[:, :, 1], 10 * win[:, :, 0])
    assert window_features(hidden, radius=1)[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert window_features(torch.tensor([[7.0]]))[:, :, 0].tolist() == [[7.0] * 5]


def test_normalize_waveform():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3, population var 3.5
    expected = (x - 3) / (3.5 + 1e-7) ** 0.5
    assert _max_diff(normalize_waveform(x), expected) < 1e-7
    assert _max_diff(normalize_waveform(x.double().numpy()), expected) < 1e-7  # numpy and float64 accepted


@pytest.mark.parametrize(
    "waveform, kwargs, message",
    [
        (torch.randn(2, 8000), {}, "1-D mono"),
        (torch.zeros(0), {}, "empty"),
        (torch.tensor([0.1, float("nan"), 0.2] * 500), {}, "500 non-finite"),
        (torch.tensor([0.1, float("inf")] * 500), {}, "non-finite"),
        (torch.zeros(8000), {}, "silent: all samples are zero"),
        (torch.full((8000,), 0.25), {}, "constant"),
        (torch.ones(8000, dtype=torch.int16), {}, "float samples"),
        (torch.randn(8000), {"sample_rate": 44100}, "16000 Hz"),
        (torch.randn(8000), {"fps": 0}, "fps"),
        (torch.randn(8000), {"num_frames": 0}, "num_frames"),
        (torch.randn(300), {}, "too short for the wav2vec2 CNN"),
    ],
)
def test_bad_inputs_rejected_before_model_work(waveform, kwargs, message):
    encoder = AudioFeatureEncoder(_tiny_ctc().wav2vec2)  # any model: it must never run

    def forbid(*_):
        raise AssertionError("the model ran on invalid input")

    hook = encoder.model.feature_extractor.register_forward_pre_hook(forbid)
    try:
        with pytest.raises(ValueError, match=message):
            encoder(waveform, **kwargs)
    finally:
        hook.remove()
